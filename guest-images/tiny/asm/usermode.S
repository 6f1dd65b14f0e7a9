# A short busy loop in user mode with the timer running (see usermode-lib.S).
.set ITERATIONS, 20000000
.include "usermode-lib.S"

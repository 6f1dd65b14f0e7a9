# A long CPU-bound loop in user mode with the timer running (see usermode-lib.S): the
# benchmark's measure of guest progress per second (scripts/bench.sh).
.set ITERATIONS, 1000000000
.include "usermode-lib.S"

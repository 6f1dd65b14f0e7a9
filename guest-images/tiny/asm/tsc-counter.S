# The counter (counter.S) with a native RDTSC read printed every 125 counts: a backup's
# replay reads another value there, diverges at the console write that shows it, and asks
# its primary for a full checkpoint. The console output the primary held at that
# checkpoint was never produced by the backup's replay; the pair tests check that the
# backup still releases every byte its primary did (Entry::HeldOutput).
.set TSC_EVERY, 125
.include "counter.S"

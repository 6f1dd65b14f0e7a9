# The virtio-net echo guest, waiting for frames in a loop that makes no exits (IF=1): the
# VMM can only deliver them when the kicker takes the vCPU out of the guest after the
# event bound (and, recording, logs a checkpoint delta there first).
.set SPIN, 1
.include "virtio-net.S"

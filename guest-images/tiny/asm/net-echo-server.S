# The virtio-net echo guest as a server that never stops (see virtio-net.S): every frame
# it receives goes back with its MACs swapped. The pair tests on simulated hosts send it
# frames from a client host across a failover.
.set ECHOES, 0x7fffffff
.include "virtio-net.S"

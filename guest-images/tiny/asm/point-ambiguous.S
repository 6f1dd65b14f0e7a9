# A kernel-mode loop whose registers are the same at the same instruction on every pass
# while the memory it counts in moves on: an event point here (vcpu/points.rs) matches the
# first pass the replayer meets, not the one the recorder was kicked at. The count printed
# at the end shows the difference at an exit, where the replay must detect and recover it.
.include "lib.S"
.set TICKS, 10

.section .text
main:
    timer_1khz on_timer
    lea rdi, [rip + msg_start]
    call puts
    sti
1:  inc qword ptr [rip + spins]
    cmp qword ptr [rip + ticks], TICKS
    jb 1b
    cli
    lea rdi, [rip + msg_spins]
    call puts
    mov rdi, qword ptr [rip + spins]
    call putdec
    call putnl
    ret

on_timer:
    push rax
    inc qword ptr [rip + ticks]
    call pic_eoi
    pop rax
    iretq

.section .rodata
msg_start: .asciz "point-ambiguous: start\n"
msg_spins: .asciz "point-ambiguous: spins "

.section .data
ticks: .quad 0
spins: .quad 0

# A counter on the serial console: "count N" once every 4 PIT ticks (1 kHz), from 0 to
# LAST, then power off with status 0. The fault-tolerance tests watch it across a failover:
# every number must appear exactly once, in order. With TSC_EVERY set (tsc-counter.S), it
# also prints a native RDTSC value every TSC_EVERY counts.
.include "lib.S"
.set LAST, 1000
.set EVERY, 4

.section .text
main:
    timer_1khz on_timer
    lea rdi, [rip + msg_start]
    call puts
next_count:
    wait_ticks ticks, EVERY
    mov qword ptr [rip + ticks], 0
    lea rdi, [rip + msg_count]
    call puts
    mov rdi, qword ptr [rip + count]
    call putdec
    call putnl
.ifdef TSC_EVERY
    mov rax, qword ptr [rip + count]
    xor edx, edx
    mov ecx, TSC_EVERY
    div rcx
    test rdx, rdx
    jnz 1f
    lea rdi, [rip + msg_tsc]
    call puts
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rdi, rax
    call puthex
    call putnl
1:
.endif
    mov rax, qword ptr [rip + count]
    inc rax
    mov qword ptr [rip + count], rax
    cmp rax, LAST
    jbe next_count
    lea rdi, [rip + msg_done]
    call puts
    xor edi, edi
    call poweroff

on_timer:
    push rax
    inc qword ptr [rip + ticks]
    call pic_eoi
    pop rax
    iretq

.section .rodata
.ifdef TSC_EVERY
msg_start: .asciz "tsc-counter: start\n"
.else
msg_start: .asciz "counter: start\n"
.endif
msg_count: .asciz "count "
.ifdef TSC_EVERY
msg_tsc: .asciz "tsc "
msg_done: .asciz "tsc-counter: done\n"
.else
msg_done: .asciz "counter: done\n"
.endif

.section .data
ticks: .quad 0
count: .quad 0

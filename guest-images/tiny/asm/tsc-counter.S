# The counter, with a native RDTSC read printed every PRINT_EVERY counts: a backup's replay
# reads another value there, diverges at the console write that shows it, and asks its
# primary for a full checkpoint. The console output the primary held at that checkpoint
# was never produced by the backup's replay; the pair tests check that the backup still
# releases every byte its primary did (Entry::HeldOutput).
.include "lib.S"
.set LAST, 1000
.set EVERY, 4
.set PRINT_EVERY, 125

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
    mov rax, qword ptr [rip + count]
    xor edx, edx
    mov ecx, PRINT_EVERY
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
1:  mov rax, qword ptr [rip + count]
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
msg_start: .asciz "tsc-counter: start\n"
msg_count: .asciz "count "
msg_tsc: .asciz "tsc "
msg_done: .asciz "tsc-counter: done\n"

.section .data
ticks: .quad 0
count: .quad 0

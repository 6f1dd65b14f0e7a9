# PIT timer interrupts through the PIC, with HLT idle between them: 50 ticks at 1 kHz.
.include "lib.S"
.set TICKS, 50

.section .text
main:
    timer_1khz on_timer
    lea rdi, [rip + msg_start]
    call puts
    wait_ticks ticks, TICKS
    lea rdi, [rip + msg_done]
    call puts
    mov rdi, qword ptr [rip + ticks]
    call putdec
    call putnl
    ret

on_timer:
    push rax
    push rdx
    push rdi
    push rsi
    push rcx
    push r8
    inc qword ptr [rip + ticks]
    mov rax, qword ptr [rip + ticks]
    xor edx, edx
    mov ecx, 10
    div rcx
    test rdx, rdx
    jnz 1f
    lea rdi, [rip + msg_tick]
    call puts
    mov rdi, qword ptr [rip + ticks]
    call putdec
    call putnl
1:  call pic_eoi
    pop r8
    pop rcx
    pop rsi
    pop rdi
    pop rdx
    pop rax
    iretq

.section .rodata
msg_start: .asciz "timer: start\n"
msg_tick: .asciz "tick "
msg_done: .asciz "timer: done, ticks="

.section .data
ticks: .quad 0

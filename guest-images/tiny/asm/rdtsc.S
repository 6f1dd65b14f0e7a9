# RDTSC: a native, unrecordable read of the host's time-stamp counter.
.include "lib.S"

.section .text
main:
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r12, rax
    mov ecx, 100000
1:  dec ecx
    jnz 1b
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r13, rax
    lea rdi, [rip + msg_value]
    call puts
    mov rdi, r13
    call puthex
    call putnl
    lea rdi, [rip + msg_up]
    cmp r13, r12
    ja 2f
    lea rdi, [rip + msg_not]
2:  call puts
    ret

.section .rodata
msg_value: .asciz "rdtsc: "
msg_up: .asciz "rdtsc: increasing\n"
msg_not: .asciz "rdtsc: not increasing\n"

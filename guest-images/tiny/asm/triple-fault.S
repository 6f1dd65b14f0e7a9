# Loads an empty IDT and faults: #UD -> #GP -> #DF -> shutdown (triple fault).
.include "lib.S"
.section .text
main:
    lea rdi, [rip + msg]
    call puts
    lidt [rip + empty_idt]
    ud2
.section .rodata
msg: .asciz "triple-fault: ud2 with an empty IDT\n"
.section .data
empty_idt:
    .word 0
    .quad 0

# Serial input by interrupt: echo what arrives, upper-cased, until a '.'; then reset.
.include "lib.S"

.section .text
main:
    mov edi, 0x24
    lea rsi, [rip + on_serial]
    xor edx, edx
    call set_gate
    mov edi, 0xef           # unmask IRQ4 only
    mov esi, 0xff
    call pic_init
    mov dx, COM1 + 1        # IER: received-data-available interrupt
    mov al, 1
    out dx, al
    lea rdi, [rip + msg_ready]
    call puts
1:  sti
    hlt
    cli
    cmp byte ptr [rip + done], 0
    je 1b
    lea rdi, [rip + msg_bye]
    call puts
    jmp reset

on_serial:
    push rax
    push rdx
    push rdi
1:  mov dx, COM1 + 5        # LSR: data ready?
    in al, dx
    test al, 1
    jz 3f
    mov dx, COM1
    in al, dx
    cmp al, '.'
    jne 2f
    mov byte ptr [rip + done], 1
2:  cmp al, 'a'
    jb 4f
    cmp al, 'z'
    ja 4f
    sub al, 32
4:  out dx, al
    jmp 1b
3:  call pic_eoi
    pop rdi
    pop rdx
    pop rax
    iretq

.section .rodata
msg_ready: .asciz "serial: ready\n"
msg_bye: .asciz "\nserial: bye\n"

.section .data
done: .byte 0

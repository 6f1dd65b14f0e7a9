# Touches a port with no device behind it: the VMM must stop the VM cleanly.
.include "lib.S"
.section .text
main:
    lea rdi, [rip + msg]
    call puts
    mov dx, 0x1234
    in al, dx
    ret
.section .rodata
msg: .asciz "bad-port: reading port 0x1234\n"

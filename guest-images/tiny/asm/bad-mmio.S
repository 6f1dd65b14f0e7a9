# Writes to an address with neither RAM nor a device: the VMM must stop the VM cleanly.
.include "lib.S"
.section .text
main:
    lea rdi, [rip + msg]
    call puts
    mov rbx, 0xe0000000
    mov dword ptr [rbx], 0x5a5a
    ret
.section .rodata
msg: .asciz "bad-mmio: writing 0xe0000000\n"

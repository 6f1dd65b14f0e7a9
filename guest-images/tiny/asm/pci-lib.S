# What the PCI test guests share (included after lib.S): configuration mechanism #1 on
# bus 0, and failing with a message.
.section .text
# cfg_read(edi = device << 11 | offset) -> eax: a dword of bus 0's configuration space.
cfg_read:
    mov eax, edi
    or eax, 0x80000000
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    ret

# cfg_write(edi = device << 11 | offset, esi = dword)
cfg_write:
    mov eax, edi
    or eax, 0x80000000
    mov dx, 0xcf8
    out dx, eax
    mov eax, esi
    mov dx, 0xcfc
    out dx, eax
    ret

# fail(rdi = message): print it and power off with status 1.
fail:
    call puts
    call putnl
    mov edi, 1
    jmp poweroff

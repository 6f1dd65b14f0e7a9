# Port and MMIO reads: CMOS date, PIT counter latch, keyboard controller self-test, and the
# ftvm system controller's registers over MMIO.
.include "lib.S"

.section .text
main:
    # CMOS date (BCD): year, month, day printed as hex digits read as decimal.
    lea rdi, [rip + msg_date]
    call puts
    mov edi, 0x09
    call cmos_read
    call put2
    mov edi, '-'
    call putc
    mov edi, 0x08
    call cmos_read
    call put2
    mov edi, '-'
    call putc
    mov edi, 0x07
    call cmos_read
    call put2
    call putnl

    # PIT channel 0 counter latch (BIOS state: mode 3, running): two reads.
    mov al, 0x00
    out 0x43, al
    in al, 0x40
    mov ah, al
    in al, 0x40
    lea rdi, [rip + msg_pit]
    call puts

    # Keyboard controller self-test answers 0x55.
    mov al, 0xaa
    out 0x64, al
    in al, 0x60
    movzx edi, al
    mov r12, rdi
    lea rdi, [rip + msg_kbd]
    call puts
    mov rdi, r12
    call puthex
    call putnl

    # System controller over MMIO: magic, version, memory size, scratch round trip.
    mov rbx, SYSCTL
    mov eax, dword ptr [rbx]
    mov r12, rax
    lea rdi, [rip + msg_magic]
    call puts
    mov rdi, r12
    call puthex
    call putnl
    lea rdi, [rip + msg_mem]
    call puts
    mov rbx, SYSCTL
    mov edi, dword ptr [rbx + 8]
    call putdec
    lea rdi, [rip + msg_mib]
    call puts
    mov rbx, SYSCTL
    mov dword ptr [rbx + 0xc], 0x1234abcd
    mov eax, dword ptr [rbx + 0xc]
    mov r12, rax
    lea rdi, [rip + msg_scratch]
    call puts
    mov rdi, r12
    call puthex
    call putnl
    ret

# cmos_read(edi = register) -> rax
cmos_read:
    mov eax, edi
    out 0x70, al
    in al, 0x71
    movzx eax, al
    ret

# put2(al = BCD byte): two digits.
put2:
    push rbx
    mov ebx, eax
    mov edi, ebx
    shr edi, 4
    and edi, 0xf
    add edi, '0'
    call putc
    mov edi, ebx
    and edi, 0xf
    add edi, '0'
    call putc
    pop rbx
    ret

.section .rodata
msg_date: .asciz "cmos date: "
msg_pit: .asciz "pit: latched\n"
msg_kbd: .asciz "i8042 self-test: "
msg_magic: .asciz "sysctl magic: "
msg_mem: .asciz "sysctl memory: "
msg_mib: .asciz " MiB\n"
msg_scratch: .asciz "sysctl scratch: "

# virtio-blk over PCI, the way a minimal driver uses it: find the function on bus 0 with
# configuration mechanism #1, take BAR0 as firmware placed it, negotiate VIRTIO_F_VERSION_1,
# set up queue 0 (8 entries), write sector 1, read sectors 0-1 back, and check the data,
# the status bytes, the used ring, the ISR and the interrupt request at the slave PIC.
# Prints what it finds; exit status 0 when all is
# well, 1 on the first failure.
.include "lib.S"
.include "virtio-blk-lib.S"

.section .text
main:
    call blk_setup

    # Write sector 1: "ftvm-blk" repeated.
    mov rax, 0x6b6c622d6d767466
    mov ecx, 64
    mov rdi, WDATA
    rep stosq
    mov edi, 1                         # OUT
    xor esi, esi
    mov edx, 512
    mov rcx, WDATA
    mov r8d, 1
    call request
    mov al, 0x0a                       # OCW3: read IRR
    out 0xa0, al
    in al, 0xa0
    movzx r13d, al
    mov al, byte ptr [r12 + 0x1000]    # ISR: read-to-clear, drops the line
    movzx r14d, al
    mov al, 0x0a
    out 0xa0, al
    in al, 0xa0
    movzx r15d, al
    lea rdi, [rip + msg_irr]
    call puts
    mov edi, r13d
    call puthex
    lea rdi, [rip + msg_isr]
    call puts
    mov edi, r14d
    call puthex
    lea rdi, [rip + msg_after]
    call puts
    mov edi, r15d
    call puthex
    call putnl

    # Read sectors 0-1 back.
    xor edi, edi                       # IN
    mov esi, 2                         # WRITE
    mov edx, 1024
    mov rcx, RDATA
    xor r8d, r8d
    call request
    lea rdi, [rip + msg_s0]
    call puts
    mov rdi, qword ptr [RDATA]
    call puthex
    call putnl
    mov rsi, WDATA
    mov rdi, RDATA + 512
    mov ecx, 64
    repe cmpsq
    lea rdi, [rip + msg_mismatch]
    jne fail
    lea rdi, [rip + msg_ok]
    call puts
    ret

.section .rodata
msg_irr: .asciz "virtio-blk: slave irr "
msg_isr: .asciz " isr "
msg_after: .asciz " irr after "
msg_s0: .asciz "virtio-blk: sector 0 starts "
msg_mismatch: .asciz "virtio-blk: sector 1 reads back different"
msg_ok: .asciz "virtio-blk: write and read back ok\n"

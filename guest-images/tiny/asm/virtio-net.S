# virtio-net over PCI, as a minimal driver uses it: find the function on bus 0 (the first
# device with id 1af4:1041), take BAR0 as firmware placed it, negotiate VIRTIO_F_VERSION_1
# and VIRTIO_NET_F_MAC, read the MAC, set up the receive queue (16 entries, 8 buffers of
# 2 KiB posted) and the transmit queue, then echo every received frame back with its
# source and destination MACs swapped, reposting each buffer, until ECHOES frames have
# gone back; then power off with status 0 (1 on the first failure). Sleeps in HLT between
# frames: IRQ 10 (slave PIC line 2) wakes it, the handler reads the ISR to drop the line.
# With SPIN defined (virtio-net-spin.S) it waits for frames in a loop that makes no exits.
# Assumes ftvm's BAR0 layout (common 0x0, ISR 0x1000, device 0x2000, notify 0x3000, x4).
.include "lib.S"
.include "pci-lib.S"

.ifndef ECHOES
.set ECHOES, 8
.endif
.set QSIZE, 16
.set RX_BUFS, 8
.set BUF_LEN, 2048
.set HDR_LEN, 12
.set DESC0, 0x200000
.set AVAIL0, 0x201000
.set USED0, 0x202000
.set DESC1, 0x203000
.set AVAIL1, 0x204000
.set USED1, 0x205000
.set RXBUF, 0x210000
.set TXBUF, 0x220000

.section .text
# IRQ 10: read the ISR (read-to-clear drops the level), end of interrupt on both PICs.
on_net:
    push rax
    mov rax, r12
    mov al, byte ptr [rax + 0x1000]
    mov al, 0x20
    out 0xa0, al
    out 0x20, al
    pop rax
    iretq

# setup_queue(edi = index, rsi = desc, rdx = avail, rcx = used): size QSIZE, enabled.
setup_queue:
    mov word ptr [r12 + 0x16], di
    mov word ptr [r12 + 0x18], QSIZE
    mov qword ptr [r12 + 0x20], rsi
    mov qword ptr [r12 + 0x28], rdx
    mov qword ptr [r12 + 0x30], rcx
    mov word ptr [r12 + 0x1c], 1
    ret

# post_rx(edi = buffer id): put receive buffer `id` on the available ring.
post_rx:
    movzx eax, word ptr [AVAIL0 + 2]
    mov ecx, eax
    and ecx, QSIZE - 1
    mov word ptr [AVAIL0 + 4 + rcx * 2], di
    inc eax
    mov word ptr [AVAIL0 + 2], ax
    ret

main:
    # Find the NIC: devices 1..31 of bus 0.
    mov ebx, 1
1:  mov edi, ebx
    shl edi, 11
    call cfg_read
    cmp eax, 0x10411af4
    je 2f
    inc ebx
    cmp ebx, 32
    jb 1b
    lea rdi, [rip + msg_nonic]
    jmp fail
2:  mov r13d, ebx
    shl r13d, 11                       # the function's configuration address
    lea rdi, [rip + msg_found]
    call puts
    mov edi, ebx
    call putdec
    lea rdi, [rip + msg_irq]
    call puts
    lea edi, [r13 + 0x3c]
    call cfg_read
    movzx edi, al
    call putdec
    call putnl
    lea edi, [r13 + 0x10]
    call cfg_read
    and eax, 0xfffffff0
    mov r12, rax                       # BAR0
    lea edi, [r13 + 0x04]              # memory decoding and bus mastering on
    call cfg_read
    or eax, 6
    mov esi, eax
    lea edi, [r13 + 0x04]
    call cfg_write

    mov edi, 0x2a                      # IRQ 10: slave line 2
    lea rsi, [rip + on_net]
    xor edx, edx
    call set_gate
    mov edi, 0xfb                      # master: only the cascade
    mov esi, 0xfb                      # slave: only line 2 (IRQ 10)
    call pic_init

    mov byte ptr [r12 + 0x14], 0       # reset
    mov byte ptr [r12 + 0x14], 1       # ACKNOWLEDGE
    mov byte ptr [r12 + 0x14], 3       # DRIVER
    mov dword ptr [r12 + 0x00], 0
    mov eax, dword ptr [r12 + 0x04]
    test eax, 1 << 5                   # VIRTIO_NET_F_MAC
    lea rdi, [rip + msg_nomac]
    jz fail
    mov dword ptr [r12 + 0x00], 1
    mov eax, dword ptr [r12 + 0x04]
    test eax, 1                        # VIRTIO_F_VERSION_1
    lea rdi, [rip + msg_v1]
    jz fail
    mov dword ptr [r12 + 0x08], 0
    mov dword ptr [r12 + 0x0c], 1 << 5
    mov dword ptr [r12 + 0x08], 1
    mov dword ptr [r12 + 0x0c], 1
    mov byte ptr [r12 + 0x14], 0xb     # FEATURES_OK
    mov al, byte ptr [r12 + 0x14]
    test al, 8
    lea rdi, [rip + msg_feat]
    jz fail

    lea rdi, [rip + msg_mac]
    call puts
    xor ebx, ebx
3:  movzx edi, byte ptr [r12 + 0x2000 + rbx]
    call puthex
    mov edi, ' '
    call putc
    inc ebx
    cmp ebx, 6
    jb 3b
    call putnl

    xor edi, edi
    mov rsi, DESC0
    mov rdx, AVAIL0
    mov rcx, USED0
    call setup_queue
    mov edi, 1
    mov rsi, DESC1
    mov rdx, AVAIL1
    mov rcx, USED1
    call setup_queue
    movzx eax, word ptr [r12 + 0x1e]   # queue 1's notify offset
    lea r13, [r12 + 0x3000 + rax * 4]  # transmit notify address
    mov byte ptr [r12 + 0x14], 0xf     # DRIVER_OK

    # Receive descriptors 0..RX_BUFS-1, one 2 KiB device-writable buffer each.
    xor ebx, ebx
4:  mov eax, ebx
    shl eax, 4
    mov ecx, ebx
    imul ecx, ecx, BUF_LEN
    add ecx, RXBUF
    mov qword ptr [DESC0 + rax], rcx
    mov dword ptr [DESC0 + rax + 8], BUF_LEN
    mov word ptr [DESC0 + rax + 12], 2 # WRITE
    mov edi, ebx
    call post_rx
    inc ebx
    cmp ebx, RX_BUFS
    jb 4b
    mov word ptr [r12 + 0x3000], 0     # notify queue 0
    lea rdi, [rip + msg_ready]
    call puts

    xor r14d, r14d                     # frames echoed
    xor r15d, r15d                     # receive used entries seen
5:  movzx eax, word ptr [USED0 + 2]
    cmp ax, r15w
    jne 6f
.ifdef SPIN
    # Wait without an exit: only a kick can bring the frame (see virtio-net-spin.S).
    sti
7:  movzx eax, word ptr [USED0 + 2]
    cmp ax, r15w
    je 7b
    cli
.else
    sti
    hlt
    cli
.endif
    jmp 5b
6:  mov ecx, r15d
    and ecx, QSIZE - 1
    mov ebx, dword ptr [USED0 + 4 + rcx * 8]     # id
    mov edx, dword ptr [USED0 + 4 + rcx * 8 + 4] # length with the header
    inc r15d
    cmp edx, HDR_LEN + 14
    lea rdi, [rip + msg_short]
    jb fail
    push rdx
    lea rdi, [rip + msg_frame]
    call puts
    mov edi, r14d
    call putdec
    lea rdi, [rip + msg_len]
    call puts
    mov rdi, qword ptr [rsp]
    sub rdi, HDR_LEN
    call putdec
    call putnl
    pop rdx
    # The echo: header and frame into TXBUF + slot * BUF_LEN, MACs swapped.
    mov eax, r14d
    and eax, QSIZE - 1
    imul edi, eax, BUF_LEN
    add edi, TXBUF
    mov esi, ebx
    imul esi, esi, BUF_LEN
    add esi, RXBUF
    mov ecx, edx
    push rdi
    push rsi
    cld
    rep movsb
    pop rsi
    pop rdi
    mov r8, qword ptr [rsi + HDR_LEN]      # destination, then 2 bytes of the source
    mov r9, qword ptr [rsi + HDR_LEN + 4]  # last 2 bytes of the destination, the source
    shr r9, 16
    mov dword ptr [rdi + HDR_LEN], r9d     # new destination = old source
    shr r9, 32
    mov word ptr [rdi + HDR_LEN + 4], r9w
    mov dword ptr [rdi + HDR_LEN + 6], r8d # new source = old destination
    shr r8, 32
    mov word ptr [rdi + HDR_LEN + 10], r8w
    mov dword ptr [rdi], 0                 # a zero virtio_net_hdr_v1
    mov dword ptr [rdi + 4], 0
    mov dword ptr [rdi + 8], 0
    # One transmit descriptor (slot) on the transmit ring, notified: sent at this exit.
    mov ecx, eax
    shl ecx, 4
    mov qword ptr [DESC1 + rcx], rdi
    mov dword ptr [DESC1 + rcx + 8], edx
    mov word ptr [DESC1 + rcx + 12], 0
    movzx ecx, word ptr [AVAIL1 + 2]
    mov r8d, ecx
    and r8d, QSIZE - 1
    mov word ptr [AVAIL1 + 4 + r8 * 2], ax
    inc ecx
    mov word ptr [AVAIL1 + 2], cx
    mov word ptr [r13], 1                  # notify queue 1
    movzx eax, word ptr [USED1 + 2]
    cmp eax, ecx
    lea rdi, [rip + msg_tx]
    jne fail
    # The receive buffer goes back to the device.
    mov edi, ebx
    call post_rx
    mov word ptr [r12 + 0x3000], 0
    inc r14d
    cmp r14d, ECHOES
    jb 5b
    lea rdi, [rip + msg_done]
    call puts
    ret

.section .rodata
msg_nonic: .asciz "virtio-net: no virtio-net function on bus 0"
msg_found: .asciz "virtio-net: pci device "
msg_irq: .asciz " irq "
msg_nomac: .asciz "virtio-net: no VIRTIO_NET_F_MAC"
msg_v1: .asciz "virtio-net: no VIRTIO_F_VERSION_1"
msg_feat: .asciz "virtio-net: FEATURES_OK refused"
msg_mac: .asciz "virtio-net: mac "
msg_ready: .asciz "virtio-net: ready\n"
msg_short: .asciz "virtio-net: received a frame shorter than an Ethernet header"
msg_frame: .asciz "virtio-net: frame "
msg_len: .asciz " length "
msg_tx: .asciz "virtio-net: transmit not on the used ring at its notify"
msg_done: .asciz "virtio-net: echoed every frame\n"

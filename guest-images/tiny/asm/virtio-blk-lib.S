# The minimal virtio-blk driver the disk guests share (included after lib.S): the queue's
# memory, configuration-space access (pci-lib.S), one request at a time (it completes at its notify
# exit), and the device's set-up. Assumes ftvm's BAR0 layout (common 0x0, ISR 0x1000,
# device 0x2000, notify 0x3000, x4) instead of walking the capabilities.
.set DESC, 0x200000
.set AVAIL, 0x201000
.set USED, 0x202000
.set HDR, 0x203000
.set WDATA, 0x204000
.set STATUS, 0x205000
.set RDATA, 0x206000

.include "pci-lib.S"

# The virtio-blk function is device 1 of bus 0.
.set BLK, 1 << 11

.section .text
# request(edi = type, esi = data flags, edx = data length, rcx = data address, r8 =
# sector): one three-descriptor request on the next avail slot, notified; checks the
# completion.
request:
    push rbx
    mov dword ptr [HDR], edi
    mov dword ptr [HDR + 4], 0
    mov qword ptr [HDR + 8], r8
    mov qword ptr [DESC], HDR
    mov dword ptr [DESC + 8], 16
    mov word ptr [DESC + 12], 1        # NEXT
    mov word ptr [DESC + 14], 1
    mov qword ptr [DESC + 16], rcx
    mov dword ptr [DESC + 24], edx
    or esi, 1                          # NEXT
    mov word ptr [DESC + 28], si
    mov word ptr [DESC + 30], 2
    mov qword ptr [DESC + 32], STATUS
    mov dword ptr [DESC + 40], 1
    mov word ptr [DESC + 44], 2        # WRITE
    mov byte ptr [STATUS], 0xff
    movzx eax, word ptr [AVAIL + 2]
    mov ebx, eax
    and eax, 7
    mov word ptr [AVAIL + 4 + rax * 2], 0
    inc ebx
    mov word ptr [AVAIL + 2], bx
    mov rax, r12
    mov word ptr [rax + 0x3000], 0     # notify queue 0: completes at this exit
    movzx eax, word ptr [USED + 2]
    cmp eax, ebx
    jne 8f
    cmp byte ptr [STATUS], 0
    jne 9f
    pop rbx
    ret
8:  lea rdi, [rip + msg_used]
    jmp fail
9:  lea rdi, [rip + msg_status]
    jmp fail

# blk_setup: find the function at 00:01.0, enable it, negotiate VIRTIO_F_VERSION_1 and
# set up queue 0 (8 entries). Leaves BAR0 in r12; prints the id, BAR, IRQ and capacity.
blk_setup:
    mov edi, BLK
    call cfg_read
    mov r13d, eax
    lea rdi, [rip + msg_id]
    call puts
    mov edi, r13d
    call puthex
    call putnl
    cmp r13d, 0x10421af4
    lea rdi, [rip + msg_noblk]
    jne fail

    mov edi, BLK | 0x10
    call cfg_read
    and eax, 0xfffffff0
    mov r12, rax                       # BAR0
    mov edi, BLK | 0x3c
    call cfg_read
    movzx r13d, al
    lea rdi, [rip + msg_bar]
    call puts
    mov rdi, r12
    call puthex
    lea rdi, [rip + msg_irq]
    call puts
    mov edi, r13d
    call putdec
    call putnl
    mov edi, BLK | 0x04                # memory decoding and bus mastering on
    call cfg_read
    or eax, 6
    mov esi, eax
    mov edi, BLK | 0x04
    call cfg_write

    mov rbx, r12
    mov byte ptr [rbx + 0x14], 0       # reset
    mov byte ptr [rbx + 0x14], 1       # ACKNOWLEDGE
    mov byte ptr [rbx + 0x14], 3       # DRIVER
    mov dword ptr [rbx + 0x00], 1
    mov eax, dword ptr [rbx + 0x04]
    test eax, 1
    lea rdi, [rip + msg_v1]
    jz fail
    mov dword ptr [rbx + 0x08], 1
    mov dword ptr [rbx + 0x0c], 1      # VIRTIO_F_VERSION_1
    mov dword ptr [rbx + 0x08], 0
    mov dword ptr [rbx + 0x0c], 0
    mov byte ptr [rbx + 0x14], 0xb     # FEATURES_OK
    mov al, byte ptr [rbx + 0x14]
    test al, 8
    lea rdi, [rip + msg_feat]
    jz fail
    mov word ptr [rbx + 0x16], 0       # queue 0
    mov word ptr [rbx + 0x18], 8
    mov qword ptr [rbx + 0x20], DESC
    mov qword ptr [rbx + 0x28], AVAIL
    mov qword ptr [rbx + 0x30], USED
    mov word ptr [rbx + 0x1c], 1
    mov byte ptr [rbx + 0x14], 0xf     # DRIVER_OK
    lea rdi, [rip + msg_cap]
    call puts
    mov rdi, qword ptr [rbx + 0x2000]
    call putdec
    call putnl
    ret

.section .rodata
msg_id: .asciz "virtio-blk: pci 00:01.0 id "
msg_noblk: .asciz "virtio-blk: no virtio-blk function at 00:01.0"
msg_bar: .asciz "virtio-blk: bar0 "
msg_irq: .asciz " irq "
msg_v1: .asciz "virtio-blk: no VIRTIO_F_VERSION_1"
msg_feat: .asciz "virtio-blk: FEATURES_OK refused"
msg_cap: .asciz "virtio-blk: capacity "
msg_used: .asciz "virtio-blk: request not on the used ring at its notify"
msg_status: .asciz "virtio-blk: request status not OK"

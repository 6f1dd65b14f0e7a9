# A disk written across a failover: after setting up virtio-blk, every 4 PIT ticks (1 kHz)
# it writes record N to sector 8 + N (512 bytes: "disk-rec" then N, repeated), prints
# "disk N", and after the last record reads all of them back and checks them, then
# powers off with status 0 (1 on any failure). The pair tests kill the primary in the
# middle: the live backup's copy of the image must hold every record once, in place.
.include "lib.S"
.include "virtio-blk-lib.S"
.set LAST, 499
.set EVERY, 4
.set FIRST_SECTOR, 8
.set CHECK, 0x210000

.section .text
main:
    call blk_setup
    # The device's INTx line (IRQ 10) stays masked at the PIC: requests complete at their
    # notify exit and the guest reads the used ring itself.
    timer_1khz on_timer
    lea rdi, [rip + msg_start]
    call puts
next_record:
    wait_ticks ticks, EVERY
    mov qword ptr [rip + ticks], 0
    # The record: "disk-rec" and N, 32 times.
    mov rdi, WDATA
    mov ecx, 32
1:  mov rax, 0x6365722d6b736964
    mov qword ptr [rdi], rax
    mov rax, qword ptr [rip + count]
    mov qword ptr [rdi + 8], rax
    add rdi, 16
    loop 1b
    mov edi, 1                         # OUT
    xor esi, esi
    mov edx, 512
    mov rcx, WDATA
    mov r8, qword ptr [rip + count]
    add r8, FIRST_SECTOR
    call request
    mov al, byte ptr [r12 + 0x1000]    # ISR: read-to-clear, drops the line
    lea rdi, [rip + msg_disk]
    call puts
    mov rdi, qword ptr [rip + count]
    call putdec
    call putnl
    mov rax, qword ptr [rip + count]
    inc rax
    mov qword ptr [rip + count], rax
    cmp rax, LAST
    jbe next_record

    # Read every record back (one sector at a time) and check it.
    xor r15d, r15d
check_record:
    xor edi, edi                       # IN
    mov esi, 2                         # WRITE (the device writes the buffer)
    mov edx, 512
    mov rcx, CHECK
    lea r8, [r15 + FIRST_SECTOR]
    call request
    mov al, byte ptr [r12 + 0x1000]
    mov rdi, CHECK
    mov ecx, 32
2:  mov rax, 0x6365722d6b736964
    cmp qword ptr [rdi], rax
    jne bad_record
    cmp qword ptr [rdi + 8], r15
    jne bad_record
    add rdi, 16
    loop 2b
    inc r15
    cmp r15, LAST
    jbe check_record
    lea rdi, [rip + msg_done]
    call puts
    ret
bad_record:
    lea rdi, [rip + msg_bad]
    call puts
    mov rdi, r15
    call putdec
    lea rdi, [rip + msg_nl]
    jmp fail

on_timer:
    push rax
    inc qword ptr [rip + ticks]
    call pic_eoi
    pop rax
    iretq

.section .rodata
msg_start: .asciz "disk-writer: start\n"
msg_disk: .asciz "disk "
msg_done: .asciz "disk-writer: all records read back\n"
msg_bad: .asciz "disk-writer: bad record "
msg_nl: .asciz ""

.section .data
ticks: .quad 0
count: .quad 0

# Long stretches in kernel mode (CPL0) without exits while the timer runs: every tick
# reaches the guest at a kick, between two instructions of one of these loops, where a
# recorder places it by breakpoint (vcpu/points.rs). The loops: one whose registers change
# every pass, one whose registers do not change between ticks (it waits for the handler's
# count), a `rep movsb` (a kick may stop it part way), and two nested loops. Each loop's
# result is printed, so a tick delivered at the wrong pass shows at an exit.
.include "lib.S"
.set SUM_N, 60000
.set COPY_BYTES, 0x20000
.set OUTER, 60
.set INNER, 1000

.section .text
main:
    timer_1khz on_timer
    lea rdi, [rip + msg_start]
    call puts
    sti
    # A loop whose registers change on every pass.
    xor eax, eax
    mov ecx, SUM_N
1:  add rax, rcx
    rol rax, 7
    dec rcx
    jnz 1b
    mov r12, rax
    # Fill the source of the copy (a loop that writes memory).
    lea rdi, [rip + copy_src]
    mov rcx, COPY_BYTES / 8
    mov rax, r12
2:  mov qword ptr [rdi], rax
    add rax, rcx
    add rdi, 8
    dec rcx
    jnz 2b
    # A loop whose registers stay the same until the handler counts 10 more ticks.
    mov rbx, qword ptr [rip + ticks]
    add rbx, 10
3:  cmp qword ptr [rip + ticks], rbx
    jb 3b
    # One string instruction over many bytes.
    lea rsi, [rip + copy_src]
    lea rdi, [rip + copy_dst]
    mov rcx, COPY_BYTES
    rep movsb
    # Nested loops.
    xor r10, r10
    mov r8, OUTER
4:  mov r9, INNER
5:  add r10, r9
    xor r10, r8
    dec r9
    jnz 5b
    dec r8
    jnz 4b
    cli
    # The copy's checksum.
    lea rsi, [rip + copy_dst]
    mov rcx, COPY_BYTES / 8
    xor r13, r13
6:  add r13, qword ptr [rsi]
    rol r13, 3
    add rsi, 8
    dec rcx
    jnz 6b
    lea rdi, [rip + msg_sum]
    call puts
    mov rdi, r12
    call puthex
    lea rdi, [rip + msg_copy]
    call puts
    mov rdi, r13
    call puthex
    lea rdi, [rip + msg_nested]
    call puts
    mov rdi, r10
    call puthex
    lea rdi, [rip + msg_ticks]
    call puts
    mov rdi, qword ptr [rip + ticks]
    call putdec
    call putnl
    ret

on_timer:
    push rax
    inc qword ptr [rip + ticks]
    call pic_eoi
    pop rax
    iretq

.section .rodata
msg_start: .asciz "kernel-loops: start\n"
msg_sum: .asciz "kernel-loops: sum "
msg_copy: .asciz " copy "
msg_nested: .asciz " nested "
msg_ticks: .asciz " ticks "

.section .data
ticks: .quad 0

.section .bss
.balign 4096
copy_src: .skip COPY_BYTES
copy_dst: .skip COPY_BYTES

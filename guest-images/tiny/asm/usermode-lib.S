# A busy loop in user mode (CPL3) with the timer running: the loop makes no exits at all;
# its result is printed from CPL3 through the TSS I/O bitmap, then `int 0x80` returns to
# the kernel, which prints the tick count and powers off. The including guest sets
# ITERATIONS (usermode: a short run for the tests; spin: a long one for the benchmark).
.include "lib.S"

.section .text
main:
    # Our own GDT: kernel code/data, user code/data, a TSS with an I/O bitmap.
    lea rax, [rip + tss]
    mov rcx, rax
    lea rdx, [rip + kstack_top]
    mov qword ptr [rax + 4], rdx           # RSP0 for interrupts from CPL3
    mov word ptr [rax + 102], 104          # I/O bitmap right after the TSS
    # TSS descriptor (16 bytes): limit = 104 + 8192 + 1 - 1, type 0x89, present.
    lea r8, [rip + gdt_tss]
    mov word ptr [r8], 104 + 8192
    mov word ptr [r8 + 2], cx
    shr rcx, 16
    mov byte ptr [r8 + 4], cl
    mov byte ptr [r8 + 5], 0x89
    mov byte ptr [r8 + 6], 0
    shr rcx, 8
    mov byte ptr [r8 + 7], cl
    shr rcx, 8
    mov dword ptr [r8 + 8], ecx
    mov dword ptr [r8 + 12], 0
    # I/O bitmap: deny all, allow COM1 (ports 0x3f8-0x3ff are byte 0x7f of the bitmap).
    lea rdi, [rip + tss + 104]
    mov ecx, 8193
    mov al, 0xff
    rep stosb
    lea rdi, [rip + tss + 104]
    mov byte ptr [rdi + 0x7f], 0
    lgdt [rip + gdt_ptr]
    # Reload CS with a far return, then the data segments and the task register.
    push 0x08
    lea rax, [rip + 1f]
    push rax
    retfq
1:  mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov ax, 0x28
    ltr ax

    mov edi, 0x20
    lea rsi, [rip + on_timer]
    xor edx, edx
    call set_gate
    mov edi, 0x80
    lea rsi, [rip + on_syscall]
    mov edx, 3                             # callable from CPL3
    call set_gate
    # This host's KVM (PVM) raises #UD at an `int 0x80` executed at CPL3 instead of
    # taking the gate; accept that form of the system call too.
    mov edi, 6
    lea rsi, [rip + on_invalid_opcode]
    xor edx, edx
    call set_gate
    mov edi, 0xfe
    mov esi, 0xff
    call pic_init
    mov edi, 1193
    call pit_init
    lea rdi, [rip + msg_enter]
    call puts

    # iretq to CPL3 with interrupts enabled.
    push 0x23                              # SS: user data | RPL 3
    lea rax, [rip + ustack_top]
    push rax
    push 0x202                             # RFLAGS: IF
    push 0x1b                              # CS: user code | RPL 3
    lea rax, [rip + user_main]
    push rax
    iretq

user_main:
    mov ecx, ITERATIONS
    mov rax, 0x9e3779b97f4a7c15
1:  mov rdx, rax
    shl rdx, 13
    xor rax, rdx
    mov rdx, rax
    shr rdx, 7
    xor rax, rdx
    mov rdx, rax
    shl rdx, 17
    xor rax, rdx
    dec ecx
    jnz 1b
    mov r12, rax
    lea rdi, [rip + msg_user]
    call puts
    mov rdi, r12
    call puthex
    call putnl
    int 0x80
2:  jmp 2b

on_invalid_opcode:
    mov rax, qword ptr [rsp]               # faulting RIP (#UD has no error code)
    cmp word ptr [rax], 0x80cd             # `int 0x80`
    jne 1f
    lea rdi, [rip + msg_via_ud]
    call puts
    jmp on_syscall
1:  push 6
    jmp unexpected

on_syscall:
    lea rdi, [rip + msg_back]
    call puts
    mov rdi, qword ptr [rip + ticks]
    call putdec
    call putnl
    xor edi, edi
    jmp poweroff

on_timer:
    push rax
    inc qword ptr [rip + ticks]
    mov al, 0x20
    out 0x20, al
    pop rax
    iretq

.section .rodata
msg_enter: .asciz "usermode: entering CPL3\n"
msg_user: .asciz "usermode: result "
msg_back: .asciz "usermode: back in kernel, ticks="
msg_via_ud: .asciz "usermode: int 0x80 arrived as #UD (host quirk)\n"

.section .data
.balign 16
gdt:
    .quad 0
    .quad 0x00af9b000000ffff                # 0x08 kernel code
    .quad 0x00cf93000000ffff                # 0x10 kernel data
    .quad 0x00affb000000ffff                # 0x18 user code (DPL 3)
    .quad 0x00cff3000000ffff                # 0x20 user data (DPL 3)
gdt_tss:
    .quad 0, 0                              # 0x28 TSS (filled in)
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
ticks: .quad 0

.section .bss
.balign 4096
tss: .space 104 + 8192 + 1
.balign 16
kstack: .space 8192
kstack_top:
ustack: .space 8192
ustack_top:

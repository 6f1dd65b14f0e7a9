# SYSCALL from CPL3 and SYSRET back, as Linux uses them. The kernel entry sits on a 4 KiB
# page only CPL0 may touch (like Linux's), so a host that completes SYSCALL without
# switching CS to the kernel's (HOST-KVM.md) makes it page-fault at LSTAR from CPL3; a VMM
# that repairs that must make it arrive at CPL0. The first system call (rax = 1) returns
# with SYSRET; the second (rax = 2) powers off.
.include "lib.S"

.section .text
main:
    # Our own GDT in the layout SYSCALL/SYSRET need: kernel CS, kernel SS, then (for
    # 64-bit SYSRET: STAR[63:48] + 16) user CS, and user SS at STAR[63:48] + 8.
    lea rax, [rip + tss]
    mov rcx, rax
    lea rdx, [rip + kstack_top]
    mov qword ptr [rax + 4], rdx
    mov word ptr [rax + 102], 104
    lea r8, [rip + gdt_tss]
    mov word ptr [r8], 104 + 8192
    mov word ptr [r8 + 2], cx
    shr rcx, 16
    mov byte ptr [r8 + 4], cl
    mov byte ptr [r8 + 5], 0x89
    shr rcx, 8
    mov byte ptr [r8 + 7], cl
    shr rcx, 8
    mov dword ptr [r8 + 8], ecx
    lea rdi, [rip + tss + 104]
    mov ecx, 8193
    mov al, 0xff
    rep stosb
    lea rdi, [rip + tss + 104]
    mov byte ptr [rdi + 0x7f], 0           # COM1 allowed from CPL3
    lgdt [rip + gdt_ptr]
    push 0x08
    lea rax, [rip + 1f]
    push rax
    retfq
1:  mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov ax, 0x38
    ltr ax

    # Page tables: first 2 MiB in 4 KiB pages, all user-accessible except the page of
    # syscall_entry; the rest of the first GiB in 2 MiB user pages.
    lea rdi, [rip + pt]
    xor eax, eax
2:  mov rdx, rax
    shl rdx, 12
    or rdx, 0x7
    mov qword ptr [rdi + rax * 8], rdx
    inc eax
    cmp eax, 512
    jb 2b
    lea rax, [rip + syscall_entry]
    shr rax, 12
    and qword ptr [rdi + rax * 8], ~4       # supervisor only
    lea rdi, [rip + pd]
    lea rdx, [rip + pt]
    or rdx, 0x7
    mov qword ptr [rdi], rdx
    mov eax, 1
3:  mov rdx, rax
    shl rdx, 21
    or rdx, 0x87
    mov qword ptr [rdi + rax * 8], rdx
    inc eax
    cmp eax, 512
    jb 3b
    lea rdi, [rip + pdpt]
    lea rdx, [rip + pd]
    or rdx, 0x7
    mov qword ptr [rdi], rdx
    # Keep the system controller reachable: map 3-4 GiB with 2 MiB pages.
    lea rdx, [rip + pd_high]
    or rdx, 0x7
    mov qword ptr [rdi + 24], rdx
    lea rdi, [rip + pd_high]
    xor eax, eax
4:  mov rdx, rax
    shl rdx, 21
    mov rcx, 0xc0000000
    add rdx, rcx
    or rdx, 0x83
    mov qword ptr [rdi + rax * 8], rdx
    inc eax
    cmp eax, 512
    jb 4b
    lea rdi, [rip + pml4]
    lea rdx, [rip + pdpt]
    or rdx, 0x7
    mov qword ptr [rdi], rdx
    lea rax, [rip + pml4]
    mov cr3, rax

    mov edi, 14
    lea rsi, [rip + on_page_fault]
    xor edx, edx
    call set_gate

    # SYSCALL MSRs: EFER.SCE, STAR (kernel CS 0x08, SYSRET base 0x20), LSTAR, SFMASK (IF).
    mov ecx, 0xc0000080
    rdmsr
    or eax, 1
    wrmsr
    mov ecx, 0xc0000081
    xor eax, eax
    mov edx, (0x20 << 16) | 0x08
    wrmsr
    mov ecx, 0xc0000082
    lea rax, [rip + syscall_entry]
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, 0xc0000084
    mov eax, 0x200
    xor edx, edx
    wrmsr

    lea rdi, [rip + msg_enter]
    call puts
    push 0x2b                              # user SS (0x28 | 3)
    lea rax, [rip + ustack_top]
    push rax
    push 0x202
    push 0x33                              # user CS (0x30 | 3)
    lea rax, [rip + user_main]
    push rax
    iretq

user_main:
    mov eax, 1
    syscall
    lea rdi, [rip + msg_back]
    call puts
    mov eax, 2
    syscall
5:  jmp 5b

on_page_fault:
    lea rdi, [rip + msg_pf]
    call puts
    mov rdi, qword ptr [rsp + 8]           # faulting RIP
    call puthex
    mov edi, ' '
    call putc
    mov rdi, qword ptr [rsp + 16]          # CS at the fault
    call puthex
    call putnl
    mov edi, 97
    jmp poweroff

.section .text.entry
.balign 4096
syscall_entry:
    mov r12, rax
    mov r13, rcx
    mov r14, r11
    mov rsp, qword ptr [rip + kstack_top_ptr]
    mov ax, cs
    and eax, 3
    lea rdi, [rip + msg_cpl0]
    test eax, eax
    jz 6f
    lea rdi, [rip + msg_cpl3]
6:  call puts
    cmp r12, 2
    je 7f
    mov rcx, r13
    mov r11, r14
    sysretq
7:  xor edi, edi
    jmp poweroff
kstack_top_ptr: .quad kstack_top
.balign 4096

.section .rodata
msg_enter: .asciz "syscall: entering CPL3\n"
msg_cpl0: .asciz "syscall: arrived in the kernel at CPL0\n"
msg_cpl3: .asciz "syscall: arrived in the kernel at CPL3 (host bug not repaired)\n"
msg_back: .asciz "syscall: back in user mode after sysret\n"
msg_pf: .asciz "syscall: page fault at "

.section .data
.balign 16
gdt:
    .quad 0
    .quad 0x00af9b000000ffff                # 0x08 kernel code
    .quad 0x00cf93000000ffff                # 0x10 kernel data
    .quad 0x00cffb000000ffff                # 0x18 user code 32 (SYSRET layout)
    .quad 0x00cff3000000ffff                # 0x20 (STAR[63:48] base)
    .quad 0x00cff3000000ffff                # 0x28 user data: SYSRET SS = base + 8
    .quad 0x00affb000000ffff                # 0x30 user code 64: SYSRET CS = base + 16
gdt_tss:
    .quad 0, 0                              # 0x38 TSS
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

.section .bss
.balign 4096
pml4: .space 4096
pdpt: .space 4096
pd: .space 4096
pd_high: .space 4096
pt: .space 4096
tss: .space 104 + 8192 + 1
.balign 16
kstack: .space 8192
kstack_top:
ustack: .space 8192
ustack_top:

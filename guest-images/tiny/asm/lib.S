# Shared runtime of the tiny test guests: entry, serial output, IDT, PIC, PIT, power-off.
# Each guest includes this file and defines `main`. The VMM enters _start in 64-bit mode
# with an identity map of the first 4 GiB (user-accessible 2 MiB pages).
.intel_syntax noprefix
.code64

.set COM1, 0x3f8
.set SYSCTL, 0xd0000000

.section .text
.global _start
_start:
    lea rsp, [rip + stack_top]
    call init_idt
    call main
    xor edi, edi
    jmp poweroff

# poweroff(edi = status): the system controller's power-off register ends the VM.
poweroff:
    mov eax, edi
    mov rbx, SYSCTL
    mov dword ptr [rbx + 0x10], eax
1:  cli
    hlt
    jmp 1b

# reset: ask the keyboard controller to pulse the CPU reset line.
reset:
    mov al, 0xfe
    out 0x64, al
1:  cli
    hlt
    jmp 1b

# putc(dil): one byte to the serial port (uses only port I/O, so CPL3 code may call it
# when the TSS I/O bitmap allows COM1).
putc:
    mov eax, edi
    mov dx, COM1
    out dx, al
    ret

# puts(rdi = NUL-terminated string)
puts:
    push rdi
1:  mov al, byte ptr [rdi]
    test al, al
    jz 2f
    mov dx, COM1
    out dx, al
    inc rdi
    jmp 1b
2:  pop rdi
    ret

# putdec(rdi): unsigned decimal.
putdec:
    push rbx
    sub rsp, 32
    mov rax, rdi
    lea rbx, [rsp + 31]
    mov byte ptr [rbx], 0
    mov ecx, 10
1:  xor edx, edx
    div rcx
    add dl, '0'
    dec rbx
    mov byte ptr [rbx], dl
    test rax, rax
    jnz 1b
    mov rdi, rbx
    call puts
    add rsp, 32
    pop rbx
    ret

# puthex(rdi): "0x" and 16 hex digits.
puthex:
    push rbx
    push r12
    mov r12, rdi
    mov edi, '0'
    call putc
    mov edi, 'x'
    call putc
    mov ebx, 16
1:  rol r12, 4
    mov edi, r12d
    and edi, 0xf
    add edi, '0'
    cmp edi, '9'
    jbe 2f
    add edi, 'a' - '0' - 10
2:  call putc
    dec ebx
    jnz 1b
    pop r12
    pop rbx
    ret

# newline
putnl:
    mov edi, 10
    jmp putc

# set_gate(edi = vector, rsi = handler, edx = DPL): a 64-bit interrupt gate.
set_gate:
    mov edi, edi
    shl rdi, 4
    lea r8, [rip + idt]
    add r8, rdi
    mov rax, rsi
    mov word ptr [r8], ax
    mov word ptr [r8 + 2], 0x08
    mov byte ptr [r8 + 4], 0
    mov ecx, edx
    shl ecx, 5
    or ecx, 0x8e
    mov byte ptr [r8 + 5], cl
    shr rax, 16
    mov word ptr [r8 + 6], ax
    shr rax, 16
    mov dword ptr [r8 + 8], eax
    mov dword ptr [r8 + 12], 0
    ret

# init_idt: every vector goes to its stub in `vector_stubs` (which reports it and powers
# off) until a guest installs its own handler.
init_idt:
    push rbx
    xor ebx, ebx
1:  mov edi, ebx
    lea rsi, [rip + vector_stubs]
    mov eax, ebx
    shl eax, 4
    add rsi, rax
    xor edx, edx
    call set_gate
    inc ebx
    cmp ebx, 256
    jb 1b
    lidt [rip + idt_ptr]
    pop rbx
    ret

# One 16-byte stub per vector: push the vector number, go to `unexpected`.
.balign 16
vector_stubs:
.set vec, 0
.rept 256
    .balign 16
    .byte 0x68                 # push imm32
    .long vec
    jmp unexpected
.set vec, vec + 1
.endr

# unexpected: print the vector and the two words above it (error code or RIP, and RIP or
# CS) and power off with status 99.
unexpected:
    lea rdi, [rip + msg_unexpected]
    call puts
    mov rdi, qword ptr [rsp]
    call puthex
    mov edi, ' '
    call putc
    mov rdi, qword ptr [rsp + 8]
    call puthex
    mov edi, ' '
    call putc
    mov rdi, qword ptr [rsp + 16]
    call puthex
    call putnl
    mov edi, 99
    jmp poweroff

# pic_init(edi = master mask, esi = slave mask): vectors 0x20-0x2f, cascade on IRQ2.
pic_init:
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xa1, al
    mov al, 1
    out 0x21, al
    out 0xa1, al
    mov eax, edi
    out 0x21, al
    mov eax, esi
    out 0xa1, al
    ret

# pit_init(edi = divisor): channel 0, rate generator (mode 2).
pit_init:
    mov al, 0x34
    out 0x43, al
    mov eax, edi
    out 0x40, al
    mov al, ah
    out 0x40, al
    ret

# timer_1khz handler: the timer guests' setup: `handler` on vector 0x20, the PIC with only
# IRQ0 unmasked, the PIT at about 1 kHz. A macro rather than a call, so that a guest's code
# (and so its exits) is what it was when it spelt this out itself.
.macro timer_1khz handler
    mov edi, 0x20
    lea rsi, [rip + \handler]
    xor edx, edx
    call set_gate
    mov edi, 0xfe           # unmask IRQ0 only
    mov esi, 0xff
    call pic_init
    mov edi, 1193           # about 1 kHz
    call pit_init
.endm

# wait_ticks var, n: idle (STI then HLT, so no tick slips in between) until the quadword
# `var`, counted by the timer handler, reaches n. Ends with interrupts off, rax = var.
.macro wait_ticks var, n
1:  sti
    hlt
    cli
    mov rax, qword ptr [rip + \var]
    cmp rax, \n
    jb 1b
.endm

# End of interrupt to the master PIC.
pic_eoi:
    mov al, 0x20
    out 0x20, al
    ret

.section .rodata
msg_unexpected: .asciz "unexpected interrupt or exception: vector "

.section .data
.balign 8
idt_ptr:
    .word 256 * 16 - 1
    .quad idt

.section .bss
.balign 4096
idt: .space 4096
stack: .space 16384
stack_top:

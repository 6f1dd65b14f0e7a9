# Console output as fast as the guest can write it: "line N" for N = 0 .. LAST (5,000 lines), unpaced,
# then power off. The benchmark's measure of console throughput (scripts/bench.sh); under
# a pair every byte waits for the backup's acknowledgement of its exit.
.include "lib.S"
.set LAST, 4999

.section .text
main:
    xor r15d, r15d
1:  lea rdi, [rip + msg_line]
    call puts
    mov rdi, r15
    call putdec
    call putnl
    inc r15
    cmp r15, LAST
    jbe 1b
    lea rdi, [rip + msg_done]
    call puts
    ret

.section .rodata
msg_line: .asciz "line "
msg_done: .asciz "chatter: done\n"

# fpu: ring 3, interrupts off. Keeps known values in x87 ST0/ST1 and in
# XMM0-XMM7 while counting; every 2^22 steps it checks every register and
# prints "fpu ok N", or "fpu BAD" and stops. A save/load that loses FPU or
# SSE state shows up as BAD.
	.code64
	.text
	.global	user_main
user_main:
	lea	msg(%rip), %rdi
	call	puts
	fninit
	fldpi
	fld1				# ST0 = 1.0, ST1 = pi
	movdqu	pat0(%rip), %xmm0
	movdqu	pat1(%rip), %xmm1
	movdqu	pat2(%rip), %xmm2
	movdqu	pat3(%rip), %xmm3
	movdqu	pat4(%rip), %xmm4
	movdqu	pat5(%rip), %xmm5
	movdqu	pat6(%rip), %xmm6
	movdqu	pat7(%rip), %xmm7
	xor	%r15d, %r15d
1:	inc	%r15
	test	$0x3fffff, %r15d
	jnz	1b
	call	check
	lea	okmsg(%rip), %rdi
	call	puts
	mov	%r15, %rdi
	call	putdec
	call	newline
	jmp	1b

# check compares every register with its pattern; it never returns on a
# mismatch. It uses XMM8 and memory only.
check:
	.irp	n, 0, 1, 2, 3, 4, 5, 6, 7
	movdqu	pat\n(%rip), %xmm8
	pcmpeqb	%xmm\n, %xmm8
	pmovmskb %xmm8, %eax
	cmp	$0xffff, %eax
	jne	bad
	.endr
	fstl	tmp(%rip)			# ST0 as a double
	mov	tmp(%rip), %rax
	mov	$0x3ff0000000000000, %rcx
	cmp	%rcx, %rax
	jne	bad
	fxch	%st(1)
	fstl	tmp(%rip)
	fxch	%st(1)
	mov	tmp(%rip), %rax
	mov	$0x400921fb54442d18, %rcx
	cmp	%rcx, %rax
	jne	bad
	ret
bad:
	lea	badmsg(%rip), %rdi
	call	puts
2:	jmp	2b

	.section .rodata
	.align	16
pat0:	.quad	0x0123456789abcdef, 0xfedcba9876543210
pat1:	.quad	0x1111111111111111, 0x2222222222222222
pat2:	.quad	0x3333333333333333, 0x4444444444444444
pat3:	.quad	0x5555555555555555, 0x6666666666666666
pat4:	.quad	0x7777777777777777, 0x8888888888888888
pat5:	.quad	0x9999999999999999, 0xaaaaaaaaaaaaaaaa
pat6:	.quad	0xbbbbbbbbbbbbbbbb, 0xcccccccccccccccc
pat7:	.quad	0xdddddddddddddddd, 0xeeeeeeeeeeeeeeee
msg:	.asciz	"fpu guest: x87 and SSE state held in registers\n"
okmsg:	.asciz	"fpu ok "
badmsg:	.asciz	"fpu BAD\n"

	.data
	.align	8
tmp:	.quad	0


# counter: ring 3, interrupts off. Increments the 64-bit `counter` in RAM
# forever and prints "counter N" every 2^22 increments. Tests read the
# counter through the ELF symbol's address.
	.code64
	.text
	.global	user_main
user_main:
	lea	msg(%rip), %rdi
	call	puts
	lea	counter(%rip), %rbx
1:	incq	(%rbx)
	mov	(%rbx), %rax
	test	$0x3fffff, %eax
	jnz	1b
	lea	prefix(%rip), %rdi
	call	puts
	mov	(%rbx), %rdi
	call	putdec
	call	newline
	jmp	1b

	.section .rodata
msg:	.asciz	"counter guest: running in ring 3\n"
prefix:	.asciz	"counter "

	.data
	.align	8
	.global	counter
counter:
	.quad	0


# Output helpers of the test guests. They use only port I/O, so they work
# in ring 0 and in ring 3 (IOPL 3). COM1 is polled (LSR.THRE) before each
# byte, as a real driver would.
	.code64
	.text

	.global putc
putc:					# putc(char=%dil)
	mov	$0x3fd, %dx
1:	inb	%dx, %al
	test	$0x20, %al
	jz	1b
	mov	$0x3f8, %dx
	mov	%dil, %al
	outb	%al, %dx
	ret

	.global puts
puts:					# puts(str=%rdi), NUL-terminated
	push	%rbx
	mov	%rdi, %rbx
1:	movzbl	(%rbx), %edi
	test	%dil, %dil
	jz	2f
	call	putc
	inc	%rbx
	jmp	1b
2:	pop	%rbx
	ret

	.global putdec
putdec:					# putdec(value=%rdi), unsigned decimal
	push	%rbx
	sub	$32, %rsp
	lea	31(%rsp), %rbx
	movb	$0, (%rbx)
	mov	%rdi, %rax
	mov	$10, %ecx
1:	xor	%edx, %edx
	div	%rcx
	add	$'0', %dl
	dec	%rbx
	mov	%dl, (%rbx)
	test	%rax, %rax
	jnz	1b
	mov	%rbx, %rdi
	call	puts
	add	$32, %rsp
	pop	%rbx
	ret

	.global newline
newline:
	mov	$'\n', %edi
	jmp	putc

	.global reset
reset:					# ask the i8042 to pulse the reset line
	mov	$0xfe, %al
	outb	%al, $0x64
1:	jmp	1b

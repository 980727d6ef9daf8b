# fill: ring 3. Writes pseudo-random data (xorshift64) to `permille`/1000
# of the RAM pages from 4 MiB to the end of RAM, chosen by a hash of the
# page number, prints "fill ready", then spins without privileged
# instructions. The benchmark patches `fill_params` in a copy of this ELF;
# it computes the same content for QEMU's memory file (tests/bench).
	.code64
	.text
	.global	user_main
user_main:
	mov	fill_params(%rip), %r12		# permille
	mov	fill_params+8(%rip), %r13	# seed
	mov	$1024, %rbx			# first page: 4 MiB
	shr	$12, %r14			# pages of RAM
1:	cmp	%r14, %rbx
	jae	4f
	# h = (page * 0x9e3779b97f4a7c15) >> 32, chosen when h % 1000 < permille
	mov	%rbx, %rax
	mov	$0x9e3779b97f4a7c15, %rcx
	imul	%rcx, %rax
	shr	$32, %rax
	xor	%edx, %edx
	mov	$1000, %ecx
	div	%rcx
	cmp	%r12, %rdx
	jae	3f
	# x = seed ^ (page * 0x2545f4914f6cdd1d) | 1, then 512 xorshift64 words
	mov	%rbx, %rax
	mov	$0x2545f4914f6cdd1d, %rcx
	imul	%rcx, %rax
	xor	%r13, %rax
	or	$1, %rax
	mov	%rbx, %rdi
	shl	$12, %rdi
	mov	$512, %ecx
2:	mov	%rax, %rdx
	shl	$13, %rdx
	xor	%rdx, %rax
	mov	%rax, %rdx
	shr	$7, %rdx
	xor	%rdx, %rax
	mov	%rax, %rdx
	shl	$17, %rdx
	xor	%rdx, %rax
	mov	%rax, (%rdi)
	add	$8, %rdi
	dec	%ecx
	jnz	2b
3:	inc	%rbx
	jmp	1b
4:	lea	ready(%rip), %rdi
	call	puts
5:	jmp	5b

	.section .rodata
ready:	.asciz	"fill ready\n"

	.data
	.align	8
	.global	fill_params
fill_params:
	.quad	100				# permille
	.quad	0x1234567				# seed


# fill: ring 3. Writes pseudo-random data (xorshift64) to `permille`/1000
# of the RAM pages from 4 MiB to the end of RAM, chosen by a hash of the
# page number, prints "fill ready", then spins without privileged
# instructions. The benchmark patches `fill_params` in a copy of this ELF;
# it computes the same content for QEMU's memory file (tests/bench).
# With `sweep` set, instead of spinning it waits for a byte on COM1 and
# then reads one word of every page from 4 MiB to the end and prints
# "sweep T", T the pass's duration in TSC ticks, and waits again: what
# touching all of RAM costs the guest at a moment the benchmark chooses
# (right after a load, and in a steady state). It writes no RAM but its
# stack meanwhile.
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
	cmpq	$0, fill_params+16(%rip)
	jne	6f
5:	jmp	5b
6:	mov	$0x3fd, %dx			# wait for a byte (LSR.DR)
	inb	%dx, %al
	test	$1, %al
	jz	6b
	mov	$0x3f8, %dx
	inb	%dx, %al
	rdtsc					# a pass: %r15 = start
	shl	$32, %rdx
	or	%rdx, %rax
	mov	%rax, %r15
	mov	$1024, %rbx
7:	cmp	%r14, %rbx
	jae	8f
	mov	%rbx, %rdi
	shl	$12, %rdi
	mov	(%rdi), %rax
	inc	%rbx
	jmp	7b
8:	rdtsc
	shl	$32, %rdx
	or	%rdx, %rax
	sub	%r15, %rax
	mov	%rax, %r12
	lea	sweep(%rip), %rdi
	call	puts
	mov	%r12, %rdi
	call	putdec
	call	newline
	jmp	6b

	.section .rodata
ready:	.asciz	"fill ready\n"
sweep:	.asciz	"sweep "

	.data
	.align	8
	.global	fill_params
fill_params:
	.quad	100				# permille
	.quad	0x1234567				# seed
	.quad	0				# sweep: 1 to time passes over RAM on request


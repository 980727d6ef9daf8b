# fill: ring 3. Writes pseudo-random data (xorshift64) to `permille`/1000
# of the RAM pages from 4 MiB to the end of RAM, chosen by a hash of the
# page number, prints "fill ready", then spins without privileged
# instructions. The benchmark patches `fill_params` in a copy of this ELF;
# it computes the same content for QEMU's memory file (tests/bench).
# With `listen` set it waits for bytes on COM1 instead of spinning: each
# one rewrites `dirty_permille`/1000 of the 64 KiB groups of pages from
# 4 MiB (16 pages each, chosen by a hash of the group and the round) and
# prints "dirtied" (the incremental-save benchmark). A 't' instead asks
# for a timed pass: it reads one word of every page from 4 MiB to the end
# and prints "sweep T", T the pass's duration in TSC ticks, writing no RAM
# but its stack: what touching all of RAM costs the guest at a moment the
# benchmark chooses (right after a load, and in a steady state).
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
	# chosen when hash(page) % 1000 < permille
	mov	%rbx, %rax
	call	pick
	cmp	%r12, %rdx
	jae	3f
	# x = seed ^ (page * 0x2545f4914f6cdd1d) | 1, then 512 xorshift64 words
	mov	%rbx, %rax
	mov	%r13, %rsi
	mov	%rbx, %rdi
	shl	$12, %rdi
	mov	$512, %ecx
	call	xorfill
3:	inc	%rbx
	jmp	1b
4:	lea	ready(%rip), %rdi
	call	puts
	cmpq	$0, fill_params+16(%rip)	# listen
	jne	6f
5:	jmp	5b
6:	xor	%r15, %r15			# round
7:	mov	$0x3fd, %dx			# wait for a byte (LSR.DR)
8:	inb	%dx, %al
	test	$1, %al
	jz	8b
	mov	$0x3f8, %dx
	inb	%dx, %al
	cmp	$'t', %al
	je	13f
	inc	%r15
	mov	$64, %rbx			# first group: 4 MiB
	mov	%r14, %r13
	shr	$4, %r13			# groups of 16 pages
9:	cmp	%r13, %rbx
	jae	12f
	# chosen when hash(round << 32 ^ group) % 1000 < dirty_permille
	mov	%r15, %rax
	shl	$32, %rax
	xor	%rbx, %rax
	call	pick
	cmp	fill_params+24(%rip), %rdx
	jae	11f
	# x = (group * 0x2545f4914f6cdd1d) ^ round | 1, 8192 xorshift64 words
	mov	%rbx, %rax
	mov	%r15, %rsi
	mov	%rbx, %rdi
	shl	$16, %rdi
	mov	$8192, %ecx
	call	xorfill
11:	inc	%rbx
	jmp	9b
12:	lea	dirtied(%rip), %rdi
	call	puts
	jmp	7b
13:	rdtsc					# a timed pass: %r12 = start
	shl	$32, %rdx
	or	%rdx, %rax
	mov	%rax, %r12
	mov	$1024, %rbx			# first page: 4 MiB
14:	cmp	%r14, %rbx
	jae	15f
	mov	%rbx, %rdi
	shl	$12, %rdi
	mov	(%rdi), %rax
	inc	%rbx
	jmp	14b
15:	rdtsc
	shl	$32, %rdx
	or	%rdx, %rax
	sub	%r12, %rax
	mov	%rax, %r12
	lea	sweep(%rip), %rdi
	call	puts
	mov	%r12, %rdi
	call	putdec
	call	newline
	jmp	7b

# pick: %rdx = ((%rax * 0x9e3779b97f4a7c15) >> 32) % 1000
pick:
	mov	$0x9e3779b97f4a7c15, %rcx
	imul	%rcx, %rax
	shr	$32, %rax
	xor	%edx, %edx
	mov	$1000, %ecx
	div	%rcx
	ret

# xorfill: from x = (%rax * 0x2545f4914f6cdd1d) ^ %rsi | 1, stores %ecx
# xorshift64 words at %rdi.
xorfill:
	mov	$0x2545f4914f6cdd1d, %rdx
	imul	%rdx, %rax
	xor	%rsi, %rax
	or	$1, %rax
1:	mov	%rax, %rdx
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
	jnz	1b
	ret

	.section .rodata
ready:	.asciz	"fill ready\n"
dirtied: .asciz	"dirtied\n"
sweep:	.asciz	"sweep "

	.data
	.align	8
	.global	fill_params
fill_params:
	.quad	100				# permille
	.quad	0x1234567				# seed
	.quad	0				# listen: 1 to wait for bytes on COM1
	.quad	10				# dirty_permille


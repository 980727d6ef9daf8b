# rng: a polling virtio-rng driver in ring 3. It sets up the entropy
# device at 0xd0010000 (queue of 8), then forever: hands it a 16-byte
# buffer, polls the used ring, and prints "rng N: V" with the request count
# N and the buffer's first 8 bytes V in decimal ("rng: short read" if the
# device returned fewer than 16 bytes), then spins a while.
	.code64
	.set	MMIO, 0xd0010000
	.text
fail:					# fail(msg=%rdi): print and stop
	call	puts
1:	jmp	1b

	.global	user_main
user_main:
	lea	hello(%rip), %rdi
	call	puts
	mov	$MMIO, %r13
	movl	(%r13), %eax
	lea	nodev(%rip), %rdi
	cmp	$0x74726976, %eax
	jne	fail
	movl	8(%r13), %eax
	cmp	$4, %eax			# entropy device
	jne	fail
	movl	$0, 0x70(%r13)			# reset
	movl	$3, 0x70(%r13)			# ACKNOWLEDGE | DRIVER
	movl	$1, 0x24(%r13)
	movl	$1, 0x20(%r13)			# driver: VERSION_1
	movl	$11, 0x70(%r13)			# | FEATURES_OK
	movl	0x70(%r13), %eax
	lea	nofeat(%rip), %rdi
	test	$8, %eax
	jz	fail
	movl	$0, 0x30(%r13)			# queue 0
	movl	$8, 0x38(%r13)
	lea	desc(%rip), %rax
	movl	%eax, 0x80(%r13)
	shr	$32, %rax
	movl	%eax, 0x84(%r13)
	lea	avail(%rip), %rax
	movl	%eax, 0x90(%r13)
	shr	$32, %rax
	movl	%eax, 0x94(%r13)
	lea	used(%rip), %rax
	movl	%eax, 0xa0(%r13)
	shr	$32, %rax
	movl	%eax, 0xa4(%r13)
	movl	$1, 0x44(%r13)			# queue ready
	movl	$15, 0x70(%r13)			# | DRIVER_OK

loop:	movq	$0, buf(%rip)
	movq	$0, buf+8(%rip)
	lea	desc(%rip), %rbx
	lea	buf(%rip), %rax
	mov	%rax, 0(%rbx)
	movl	$16, 8(%rbx)
	movw	$2, 12(%rbx)			# WRITE
	movw	$0, 14(%rbx)
	lea	avail(%rip), %rbx
	movzwl	2(%rbx), %eax
	mov	%eax, %edx
	and	$7, %edx
	movw	$0, 4(%rbx,%rdx,2)		# ring[idx % 8] = descriptor 0
	inc	%eax
	mov	%ax, 2(%rbx)			# publish the new avail index
	mov	%eax, %r8d
	movl	$0, 0x50(%r13)			# notify queue 0
	lea	used(%rip), %rbx
1:	movzwl	2(%rbx), %eax
	cmp	%r8w, %ax
	jne	1b
	dec	%eax
	and	$7, %eax
	movl	8(%rbx,%rax,8), %eax		# used ring element: len
	lea	short(%rip), %rdi
	cmp	$16, %eax
	jne	fail
	incq	rcount(%rip)
	lea	label(%rip), %rdi
	call	puts
	mov	rcount(%rip), %rdi
	call	putdec
	lea	colon(%rip), %rdi
	call	puts
	mov	buf(%rip), %rdi
	call	putdec
	call	newline
	mov	$0x2000000, %ecx		# spin, then ask again
2:	dec	%ecx
	jnz	2b
	jmp	loop

	.section .rodata
hello:	.asciz	"rng guest: polling virtio-rng driver in ring 3\n"
nodev:	.asciz	"rng: no virtio-rng device at 0xd0010000\n"
nofeat:	.asciz	"rng: FEATURES_OK refused\n"
short:	.asciz	"rng: short read\n"
label:	.asciz	"rng "
colon:	.asciz	": "

	.data
	.align	8
	.global	rcount
rcount:	.quad	0

	.bss
	.align	4096
desc:	.space	256
avail:	.space	256
used:	.space	256
buf:	.space	16

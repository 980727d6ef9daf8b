# hostile: ring 3. Misbehaves on purpose: floods the UART with 256 KiB of
# output, reads and writes unmapped MMIO, then feeds the virtio-blk device
# at 0xd0000000 descriptors outside RAM, a descriptor loop and a huge
# length, polling each one back. Finally it does one good request and
# prints "hostile done: N" with the status of the good request (0 = ok),
# then spins. The VMM must survive all of it.
	.code64
	.set	MMIO, 0xd0000000
	.text
	.global	user_main
user_main:
	# 1. UART flood, without waiting for THRE.
	mov	$0x3f8, %dx
	mov	$(1 << 18), %ecx
1:	mov	$'x', %al
	outb	%al, %dx
	dec	%ecx
	jnz	1b
	mov	$'\n', %edi
	call	putc
	# 2. Unmapped MMIO in the hole, read and write.
	mov	$0xe0000000, %rbx
	mov	$1000, %ecx
2:	movl	(%rbx), %eax
	movl	%eax, 4(%rbx)
	add	$8, %rbx
	dec	%ecx
	jnz	2b
	# 3. virtio-blk set-up as the blk guest does.
	mov	$MMIO, %r13
	movl	$0, 0x70(%r13)
	movl	$3, 0x70(%r13)
	movl	$1, 0x24(%r13)
	movl	$1, 0x20(%r13)
	movl	$0, 0x24(%r13)
	movl	$0, 0x20(%r13)
	movl	$11, 0x70(%r13)
	movl	$0, 0x30(%r13)
	movl	$8, 0x38(%r13)
	lea	desc(%rip), %rax
	movl	%eax, 0x80(%r13)
	movl	$0, 0x84(%r13)
	lea	avail(%rip), %rax
	movl	%eax, 0x90(%r13)
	movl	$0, 0x94(%r13)
	lea	used(%rip), %rax
	movl	%eax, 0xa0(%r13)
	movl	$0, 0xa4(%r13)
	movl	$1, 0x44(%r13)
	movl	$15, 0x70(%r13)
	lea	desc(%rip), %rbx
	# a) header in RAM, buffer far outside RAM
	lea	hdr(%rip), %rax
	mov	%rax, 0(%rbx)
	movl	$16, 8(%rbx)
	movw	$1, 12(%rbx)
	movw	$1, 14(%rbx)
	mov	$0x7000000000, %rax
	mov	%rax, 16(%rbx)
	movl	$512, 24(%rbx)
	movw	$3, 28(%rbx)
	movw	$2, 30(%rbx)
	lea	status(%rip), %rax
	mov	%rax, 32(%rbx)
	movl	$1, 40(%rbx)
	movw	$2, 44(%rbx)
	call	kick
	# b) a loop: descriptor 1 points back to descriptor 0
	movw	$0, 30(%rbx)
	lea	scratch(%rip), %rax
	mov	%rax, 16(%rbx)
	call	kick
	# c) a huge length
	movw	$2, 30(%rbx)
	movl	$0xfffff000, 24(%rbx)
	call	kick
	# d) a good read of sector 0
	movl	$512, 24(%rbx)
	call	kick
	movzbl	status(%rip), %r12d
	lea	done(%rip), %rdi
	call	puts
	mov	%r12, %rdi
	call	putdec
	call	newline
3:	jmp	3b

# kick publishes descriptor chain 0 and polls the used ring.
kick:
	lea	hdr(%rip), %rax
	movl	$0, (%rax)			# VIRTIO_BLK_T_IN
	movq	$0, 8(%rax)
	movb	$0xff, status(%rip)
	lea	avail(%rip), %rax
	movzwl	2(%rax), %ecx
	mov	%ecx, %edx
	and	$7, %edx
	movw	$0, 4(%rax,%rdx,2)
	inc	%ecx
	mov	%cx, 2(%rax)
	movl	$0, 0x50(%r13)
	lea	used(%rip), %rax
1:	movzwl	2(%rax), %edx
	cmp	%cx, %dx
	jne	1b
	ret

	.section .rodata
done:	.asciz	"hostile done: "

	.bss
	.align	4096
desc:	.space	256
avail:	.space	256
used:	.space	256
hdr:	.space	16
status:	.space	16
scratch:	.space	512

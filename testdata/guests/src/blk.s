# blk: a polling virtio-blk driver in ring 3 (MMIO exits work from ring 3;
# interrupts would not). It sets up the virtio-mmio device at 0xd0000000
# (queue of 8), writes `pattern` to sector 16, reads it back into `readbuf`
# and prints "blk: round trip ok". Then it re-reads the sector forever,
# printing "blk verify ok" or "blk verify MISMATCH" each time, so a test can
# change the disk or RAM and see what the guest sees. With `blk_mode` set
# (a test sets it before the guest starts) it instead writes sector 16
# forever, each time with the next value of `wcount` in its first 8 bytes,
# stored to `wcount` before the request is submitted. With `blk_mode` 2 it
# writes the same way but resets and sets up the device again before each
# write (counted in `rcount`), and gives a request up after TIMEOUT polls
# of the used ring: it then resets the device and submits the same value
# again, as a driver that resets on a timeout or at shutdown.
	.code64
	.set	MMIO, 0xd0000000
	.set	SECTOR, 16
	.set	TIMEOUT, 0x400000
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
	cmp	$2, %eax
	jne	fail
	call	setup

	lea	pattern(%rip), %rdi		# pattern[i] = i ^ 0x5a
	xor	%ecx, %ecx
1:	mov	%ecx, %eax
	xor	$0x5a, %eax
	mov	%al, (%rdi,%rcx)
	inc	%ecx
	cmp	$512, %ecx
	jne	1b

	mov	$1, %edi			# VIRTIO_BLK_T_OUT
	lea	pattern(%rip), %rdx
	mov	$1, %ecx			# data flags: NEXT
	call	submit
	lea	wfail(%rip), %rdi
	test	%eax, %eax
	jnz	fail
	call	readback
	lea	rtfail(%rip), %rdi
	jnz	fail
	lea	rtok(%rip), %rdi
	call	puts
	cmpq	$0, blk_mode(%rip)
	jne	writer

2:	mov	$0x2000000, %ecx		# spin, then verify again
3:	dec	%ecx
	jnz	3b
	call	readback
	lea	vok(%rip), %rdi
	jz	4f
	lea	vbad(%rip), %rdi
4:	call	puts
	jmp	2b

writer:	lea	wrun(%rip), %rdi
	call	puts
	cmpq	$2, blk_mode(%rip)
	je	rwriter
5:	mov	wcount(%rip), %rax
	inc	%rax
	mov	%rax, wcount(%rip)
	mov	%rax, pattern(%rip)
	mov	$1, %edi			# VIRTIO_BLK_T_OUT
	lea	pattern(%rip), %rdx
	mov	$1, %ecx
	call	submit
	test	%eax, %eax
	jz	5b
	lea	wfail(%rip), %rdi
	jmp	fail

rwriter:
6:	mov	wcount(%rip), %rax
	inc	%rax
	mov	%rax, wcount(%rip)
	mov	%rax, pattern(%rip)
7:	call	setup
	mov	$1, %edi			# VIRTIO_BLK_T_OUT
	lea	pattern(%rip), %rdx
	mov	$1, %ecx
	call	submit
	test	%eax, %eax
	jz	6b
	cmp	$-1, %eax			# timed out: reset, the same value again
	je	7b
	lea	wfail(%rip), %rdi
	jmp	fail

# setup resets the device, clears the rings (a reset device starts at ring
# position 0) and initialises it with one queue of 8; it counts in rcount.
setup:
	incq	rcount(%rip)
	mov	$MMIO, %r13
	movl	$0, 0x70(%r13)			# reset
	lea	desc(%rip), %rdi
	xor	%eax, %eax
	mov	$768, %ecx			# desc, avail, used
	rep stosb
	movl	$3, 0x70(%r13)			# ACKNOWLEDGE | DRIVER
	movl	$1, 0x14(%r13)			# device features, high word
	movl	0x10(%r13), %eax
	lea	nomodern(%rip), %rdi
	test	$1, %eax			# VIRTIO_F_VERSION_1
	jz	fail
	movl	$1, 0x24(%r13)
	movl	$1, 0x20(%r13)			# driver: VERSION_1
	movl	$0, 0x24(%r13)
	movl	$0, 0x20(%r13)
	movl	$11, 0x70(%r13)			# | FEATURES_OK
	movl	0x70(%r13), %eax
	lea	nofeat(%rip), %rdi
	test	$8, %eax
	jz	fail
	movl	$0, 0x30(%r13)			# queue 0
	movl	0x34(%r13), %eax
	lea	noqueue(%rip), %rdi
	cmp	$8, %eax
	jb	fail
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
	ret

# readback reads the sector into readbuf and compares it with pattern;
# ZF is set when they match (and the request succeeded).
readback:
	lea	readbuf(%rip), %rdi
	xor	%eax, %eax
	mov	$512, %ecx
	rep stosb
	xor	%edi, %edi			# VIRTIO_BLK_T_IN
	lea	readbuf(%rip), %rdx
	mov	$3, %ecx			# data flags: NEXT | WRITE
	call	submit
	test	%eax, %eax
	jnz	1f
	lea	pattern(%rip), %rsi
	lea	readbuf(%rip), %rdi
	mov	$512, %ecx
	repe cmpsb
1:	ret

# submit(type=%edi, buffer=%rdx, data flags=%ecx): one request of three
# descriptors (header, 512-byte buffer, status); polls the used ring and
# returns the status byte in %eax, or -1 where blk_mode 2 gave up after
# TIMEOUT polls.
submit:
	push	%rbx
	lea	hdr(%rip), %rax
	mov	%edi, (%rax)
	movl	$0, 4(%rax)
	movq	$SECTOR, 8(%rax)
	lea	desc(%rip), %rbx
	mov	%rax, 0(%rbx)
	movl	$16, 8(%rbx)
	movw	$1, 12(%rbx)			# NEXT
	movw	$1, 14(%rbx)
	mov	%rdx, 16(%rbx)
	movl	$512, 24(%rbx)
	mov	%cx, 28(%rbx)
	movw	$2, 30(%rbx)
	lea	status(%rip), %rax
	movb	$0xff, (%rax)
	mov	%rax, 32(%rbx)
	movl	$1, 40(%rbx)
	movw	$2, 44(%rbx)			# WRITE
	movw	$0, 46(%rbx)
	lea	avail(%rip), %rbx
	movzwl	2(%rbx), %eax
	mov	%eax, %edx
	and	$7, %edx
	movw	$0, 4(%rbx,%rdx,2)		# ring[idx % 8] = descriptor 0
	inc	%eax
	mov	%ax, 2(%rbx)			# publish the new avail index
	mov	%eax, %r8d
	mov	$MMIO, %rdx
	movl	$0, 0x50(%rdx)			# notify queue 0
	lea	used(%rip), %rbx
	mov	$TIMEOUT, %r9d
1:	movzwl	2(%rbx), %eax
	cmp	%r8w, %ax
	je	2f
	cmpq	$2, blk_mode(%rip)
	jne	1b
	dec	%r9d
	jnz	1b
	mov	$-1, %eax
	pop	%rbx
	ret
2:	movzbl	status(%rip), %eax
	pop	%rbx
	ret

	.section .rodata
hello:	.asciz	"blk guest: polling virtio-blk driver in ring 3\n"
nodev:	.asciz	"blk: no virtio-blk device at 0xd0000000\n"
nomodern:	.asciz	"blk: device is not virtio 1.0\n"
nofeat:	.asciz	"blk: FEATURES_OK refused\n"
noqueue:	.asciz	"blk: queue too small\n"
wfail:	.asciz	"blk: write failed\n"
rtfail:	.asciz	"blk: round trip MISMATCH\n"
rtok:	.asciz	"blk: round trip ok\n"
vok:	.asciz	"blk verify ok\n"
vbad:	.asciz	"blk verify MISMATCH\n"
wrun:	.asciz	"blk: writing sector 16 forever\n"

	.data
	.align	8
	.global	blk_mode
blk_mode:	.quad	0
	.global	wcount
wcount:	.quad	0
	.global	rcount
rcount:	.quad	0

	.bss
	.align	4096
desc:	.space	256
avail:	.space	256
used:	.space	256
hdr:	.space	16
status:	.space	16
	.align	4096
	.global	pattern
pattern:	.space	512
	.global	readbuf
readbuf:	.space	512

# timer: stays in ring 0 (on a PVM host interrupts cannot reach ring 3).
# Remaps the PIC to vectors 0x20-0x2f, programs PIT channel 0 at 100 Hz,
# counts IRQ 0 in an IDT handler and sleeps in `sti; hlt` between ticks,
# printing "tick N" every 10 ticks. `ticks` is an ELF symbol for tests.
	.code64
	.text
	.global guest_main
guest_main:
	call	build_idt
	lidt	idt_ptr(%rip)
	# PIC: ICW1-ICW4 for master (0x20) and slave (0xa0), then masks.
	mov	$0x11, %al
	outb	%al, $0x20
	outb	%al, $0xa0
	mov	$0x20, %al
	outb	%al, $0x21
	mov	$0x28, %al
	outb	%al, $0xa1
	mov	$0x04, %al
	outb	%al, $0x21
	mov	$0x02, %al
	outb	%al, $0xa1
	mov	$0x01, %al
	outb	%al, $0x21
	outb	%al, $0xa1
	mov	$0xfe, %al		# only IRQ 0
	outb	%al, $0x21
	mov	$0xff, %al
	outb	%al, $0xa1
	# PIT channel 0, lobyte/hibyte, mode 2, divisor 11932 (100 Hz).
	mov	$0x34, %al
	outb	%al, $0x43
	mov	$(11932 & 0xff), %al
	outb	%al, $0x40
	mov	$(11932 >> 8), %al
	outb	%al, $0x40
	lea	msg(%rip), %rdi
	call	puts
	xor	%r15d, %r15d		# last tick printed
1:	sti
	hlt
	cli
	mov	ticks(%rip), %rax
	mov	%rax, %rbx
	sub	%r15, %rbx
	cmp	$10, %rbx
	jb	1b
	mov	%rax, %r15
	lea	prefix(%rip), %rdi
	call	puts
	mov	%r15, %rdi
	call	putdec
	call	newline
	jmp	1b

timer_isr:
	push	%rax
	incq	ticks(%rip)
	mov	$0x20, %al		# EOI to the master PIC
	outb	%al, $0x20
	pop	%rax
	iretq

spurious_isr:
	iretq

unexpected_isr:
	lea	unexpected(%rip), %rdi
	call	puts
2:	cli
	hlt
	jmp	2b

# build_idt fills 48 interrupt gates: 0x20 the timer, 0x27 and 0x2f
# spurious, everything else a handler that reports and stops.
build_idt:
	lea	idt(%rip), %rdi
	xor	%ecx, %ecx
1:	lea	unexpected_isr(%rip), %rax
	cmp	$0x20, %ecx
	jne	2f
	lea	timer_isr(%rip), %rax
2:	cmp	$0x27, %ecx
	je	3f
	cmp	$0x2f, %ecx
	jne	4f
3:	lea	spurious_isr(%rip), %rax
4:	mov	%rax, %rdx
	and	$0xffff, %edx			# offset 15:0
	or	$(0x08 << 16), %rdx		# selector
	mov	$0x8e, %r8d			# present, DPL 0, interrupt gate
	shl	$40, %r8
	or	%r8, %rdx
	mov	%rax, %r8
	shr	$16, %r8
	and	$0xffff, %r8d			# offset 31:16
	shl	$48, %r8
	or	%r8, %rdx
	mov	%rdx, (%rdi)
	shr	$32, %rax
	mov	%rax, 8(%rdi)			# offset 63:32
	add	$16, %rdi
	inc	%ecx
	cmp	$48, %ecx
	jne	1b
	ret

	.section .rodata
msg:	.asciz	"timer guest: PIT at 100 Hz\n"
prefix:	.asciz	"tick "
unexpected:	.asciz	"timer guest: unexpected interrupt\n"
	.align	16
idt_ptr:
	.word	48 * 16 - 1
	.quad	idt

	.data
	.align	8
	.global	ticks
ticks:	.quad	0

	.bss
	.align	16
idt:	.space	48 * 16

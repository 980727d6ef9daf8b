# smp: every vCPU reads its local APIC id from the LAPIC's ID register and
# reports "cpu I apic A"; vCPU 0 waits until all have reported, prints
# "smp: N cpus online" and resets the machine. Ring 0 throughout.
	.code64
	.text
	.global guest_main
guest_main:
	mov	%rdi, %r12		# vCPU index
	mov	%rsi, %r13		# vCPU count
	mov	$0xfee00020, %rax	# LAPIC ID register
	mov	(%rax), %r14d
	shr	$24, %r14d
	call	lock
	lea	cpu_msg(%rip), %rdi
	call	puts
	mov	%r12, %rdi
	call	putdec
	lea	apic_msg(%rip), %rdi
	call	puts
	mov	%r14, %rdi
	call	putdec
	call	newline
	call	unlock
	lock incl online(%rip)
	test	%r12, %r12
	jz	2f
1:	cli
	hlt
	jmp	1b
2:	pause
	mov	online(%rip), %eax
	cmp	%r13d, %eax
	jb	2b
	lea	done_msg(%rip), %rdi
	call	puts
	mov	%r13, %rdi
	call	putdec
	lea	done_tail(%rip), %rdi
	call	puts
	call	reset

lock:
1:	mov	$1, %eax
	xchg	%eax, print_lock(%rip)
	test	%eax, %eax
	jz	2f
	pause
	jmp	1b
2:	ret

unlock:
	movl	$0, print_lock(%rip)
	ret

	.section .rodata
cpu_msg:	.asciz	"cpu "
apic_msg:	.asciz	" apic "
done_msg:	.asciz	"smp: "
done_tail:	.asciz	" cpus online\n"

	.data
	.align	8
print_lock:	.long	0
	.global	online
online:		.long	0

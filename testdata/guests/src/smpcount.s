# smpcount: every vCPU goes to ring 3 on its own stack and increments its
# own 64-bit slot of `counters` (one cache line each) forever; vCPU 0 prints
# "smpcount N" every 2^22 of its own steps. Tests read `counters`.
	.code64
	.text
	.global guest_main
guest_main:
	mov	%rdi, %r12
	lea	user_main(%rip), %rax
	lea	user_stacks(%rip), %rsi
	mov	%r12, %rcx
	inc	%rcx
	shl	$13, %rcx			# 8 KiB per vCPU
	add	%rcx, %rsi
	mov	%rax, %rdi
	jmp	enter_user			# %r12 survives: it is ours

user_main:
	lea	counters(%rip), %rbx
	mov	%r12, %rcx
	shl	$6, %rcx
	add	%rcx, %rbx			# this vCPU's slot
	test	%r12, %r12
	jnz	2f
	lea	msg(%rip), %rdi
	call	puts
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
2:	incq	(%rbx)
	jmp	2b

	.section .rodata
msg:	.asciz	"smpcount guest: every vCPU counts in ring 3\n"
prefix:	.asciz	"smpcount "

	.data
	.align	64
	.global	counters
counters:
	.space	64 * 16

	.bss
	.align	4096
user_stacks:
	.space	8192 * 16

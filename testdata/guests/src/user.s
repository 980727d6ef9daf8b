# Ring-3 entry shared by the guests that run only in ring 3 (hello, counter,
# fpu, blk, fill, hostile): guest_main enters the guest's user_main in ring
# 3 on this 16 KiB stack, interrupts off (enter_user in start.s), with R14
# holding the RAM size in bytes. Every vCPU that calls guest_main uses the
# same stack: these guests run on one vCPU.
	.code64
	.text
	.global guest_main
guest_main:
	mov	%rdx, %r14
	lea	user_main(%rip), %rdi
	lea	user_stack_top(%rip), %rsi
	jmp	enter_user

	.bss
	.align	16
	.space	16384
user_stack_top:

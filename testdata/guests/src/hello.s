# hello: prints a greeting from ring 3 and resets the machine through the
# i8042, so `snapvmm run` ends with status 0.
	.code64
	.text
	.global	user_main
user_main:
	lea	msg(%rip), %rdi
	call	puts
	call	reset

	.section .rodata
msg:	.asciz	"Hello from the snapvmm hello guest (ring 3)\n"


# scribble: ring 3. Prints "scribble ready", then forever stores a
# pseudo-random word (xorshift64) at a pseudo-random place of a
# pseudo-random page from 4 MiB to the end of RAM, one store per 2^20
# iterations of a delay loop: between two pauses it changes a few random
# pages, what incremental snapshot tests need.
	.code64
	.text
	.global	user_main
user_main:
	lea	ready(%rip), %rdi
	call	puts
	mov	%r14, %r12
	shr	$12, %r12
	sub	$1024, %r12			# pages from 4 MiB to the end
	mov	$0x9e3779b97f4a7c15, %rax	# xorshift state
1:	mov	%rax, %rdx
	shl	$13, %rdx
	xor	%rdx, %rax
	mov	%rax, %rdx
	shr	$7, %rdx
	xor	%rdx, %rax
	mov	%rax, %rdx
	shl	$17, %rdx
	xor	%rdx, %rax
	mov	%rax, %rbx
	xor	%edx, %edx
	div	%r12				# rdx = x % pages
	add	$1024, %rdx
	shl	$12, %rdx
	mov	%rbx, %rcx
	shr	$52, %rcx
	and	$0xff8, %rcx			# a word of the page
	add	%rcx, %rdx
	mov	%rbx, (%rdx)
	mov	%rbx, %rax
	mov	$0x100000, %ecx
2:	dec	%ecx
	jnz	2b
	jmp	1b

	.section .rodata
ready:	.asciz	"scribble ready\n"

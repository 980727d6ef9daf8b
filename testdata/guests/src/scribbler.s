# scribbler: ring 3. Rewrites RAM from 4 MiB to the end (R14 bytes)
# forever. Sweep G stores G << 40 | address into every 8-byte word in
# address order, then sweep G+1 starts over. So at every instant each word
# below the cursor holds the stamp of G and each word from the cursor on
# the stamp of G-1 (sweep 0 writes over zeros: its "G-1" stamp is 0). G and
# the cursor live in registers (R12, R15), saved with the vCPU: a snapshot
# whose RAM is not all of one instant, the vCPU's, breaks that rule, be it
# by pages from another moment or by a page half old, half new, anywhere
# but in the word in flight.
#
# At each page boundary it reads `scrib_check`; a test sets it after a
# load, and the scribbler then checks the whole region against the rule,
# prints "scribbler OK gen G" or "scribbler BAD page P word W gen G found
# V", and spins without writing. `scrib_sweeps` counts finished sweeps.
	.code64
	.text
	.global	user_main
user_main:
	lea	msg(%rip), %rdi
	call	puts
	xor	%r12d, %r12d			# G
1:	mov	$0x400000, %r15			# cursor
2:	mov	%r12, %rax
	shl	$40, %rax
	or	%r15, %rax
	mov	%rax, (%r15)
	add	$8, %r15
	test	$0xfff, %r15d
	jnz	2b
	cmpq	$0, scrib_check(%rip)
	jne	check
	cmp	%r14, %r15
	jb	2b
	inc	%r12
	mov	%r12, scrib_sweeps(%rip)
	jmp	1b

check:	mov	$0x400000, %rbx
3:	cmp	%r14, %rbx
	jae	ok
	mov	%r12, %rax			# below the cursor: G
	cmp	%r15, %rbx
	jb	4f
	xor	%eax, %eax			# from the cursor on: G-1, or 0 in sweep 0
	test	%r12, %r12
	jz	5f
	lea	-1(%r12), %rax
4:	shl	$40, %rax
	or	%rbx, %rax
5:	cmp	%rax, (%rbx)
	jne	bad
	add	$8, %rbx
	jmp	3b

ok:	lea	okmsg(%rip), %rdi
	call	puts
	mov	%r12, %rdi
	call	putdec
	call	newline
	jmp	spin

bad:	lea	badmsg(%rip), %rdi
	call	puts
	mov	%rbx, %rdi
	shr	$12, %rdi
	call	putdec
	lea	wordmsg(%rip), %rdi
	call	puts
	mov	%rbx, %rdi
	and	$0xfff, %rdi
	shr	$3, %rdi
	call	putdec
	lea	genmsg(%rip), %rdi
	call	puts
	mov	%r12, %rdi
	call	putdec
	lea	foundmsg(%rip), %rdi
	call	puts
	mov	(%rbx), %rdi
	shr	$40, %rdi
	call	putdec
	call	newline
spin:	jmp	spin

	.section .rodata
msg:	.asciz	"scribbler: running in ring 3\n"
okmsg:	.asciz	"scribbler OK gen "
badmsg:	.asciz	"scribbler BAD page "
wordmsg: .asciz	" word "
genmsg:	.asciz	" gen "
foundmsg: .asciz " found gen "

	.data
	.align	8
	.global	scrib_check
scrib_check:
	.quad	0
	.global	scrib_sweeps
scrib_sweeps:
	.quad	0

# Shared start-up code of the snapvmm test guests.
#
# The VMM enters _start on every vCPU in 64-bit ring 0 with paging on (its
# identity map), interrupts off, RSP at the top of a per-vCPU stack, and
#   RDI = vCPU index, RSI = vCPU count, RDX = RAM size in bytes.
# _start installs the guest's own GDT (with ring-3 segments) and its own page
# tables (identity map of the first 4 GiB with the user bit set, so ring-3
# code may touch all RAM and the LAPIC), then calls guest_main(idx, n, ram)
# in ring 0. vCPU 0 builds the tables; the others wait for it.

	.code64
	.section .text.start, "ax"
	.global _start
_start:
	mov	%rdi, %r12
	mov	%rsi, %r13
	mov	%rdx, %r14
	lgdt	gdt_ptr(%rip)
	pushq	$0x08
	lea	1f(%rip), %rax
	pushq	%rax
	lretq
1:	mov	$0x10, %eax
	mov	%eax, %ds
	mov	%eax, %es
	mov	%eax, %ss
	xor	%eax, %eax
	mov	%eax, %fs
	mov	%eax, %gs
	test	%r12, %r12
	jnz	3f
	call	build_page_tables
	movl	$1, pt_ready(%rip)
	jmp	4f
3:	pause
	cmpl	$0, pt_ready(%rip)
	je	3b
4:	lea	pml4(%rip), %rax
	mov	%rax, %cr3
	mov	%r12, %rdi
	mov	%r13, %rsi
	mov	%r14, %rdx
	call	guest_main
5:	cli
	hlt
	jmp	5b

# build_page_tables: PML4[0] -> PDPT, PDPT[0..3] -> 4 page directories of
# 2 MiB pages, all present, writable and user-accessible.
build_page_tables:
	lea	pdpt(%rip), %rax
	or	$0x7, %rax
	mov	%rax, pml4(%rip)
	lea	pds(%rip), %rdi
	lea	pdpt(%rip), %rsi
	xor	%ecx, %ecx
1:	mov	%rdi, %rax
	or	$0x7, %rax
	mov	%rax, (%rsi,%rcx,8)
	add	$4096, %rdi
	inc	%ecx
	cmp	$4, %ecx
	jne	1b
	lea	pds(%rip), %rdi
	xor	%ecx, %ecx
	mov	$0x87, %rax		# present, writable, user, 2 MiB
2:	mov	%rax, (%rdi,%rcx,8)
	add	$0x200000, %rax
	inc	%ecx
	cmp	$2048, %ecx
	jne	2b
	ret

# enter_user(rip=%rdi, rsp=%rsi): iretq to ring 3 with IOPL=3 (port I/O
# allowed) and IF=0 (on a PVM host ring 3 can never return to ring 0).
	.global enter_user
enter_user:
	pushq	$0x1b			# SS: user data | RPL 3
	pushq	%rsi
	pushq	$0x3002			# RFLAGS: IOPL 3, IF 0
	pushq	$0x23			# CS: user code | RPL 3
	pushq	%rdi
	iretq

	.section .rodata
	.align	16
gdt:
	.quad	0
	.quad	0x00af9b000000ffff	# 0x08 kernel code, 64-bit
	.quad	0x00cf93000000ffff	# 0x10 kernel data
	.quad	0x00cff3000000ffff	# 0x18 user data, DPL 3
	.quad	0x00affb000000ffff	# 0x20 user code, 64-bit, DPL 3
gdt_end:
gdt_ptr:
	.word	gdt_end - gdt - 1
	.quad	gdt

	.data
	.align	8
pt_ready:
	.long	0

	.bss
	.align	4096
pml4:	.space	4096
pdpt:	.space	4096
pds:	.space	4 * 4096

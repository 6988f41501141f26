"""The C text of an SDT probe site as <sys/sdt.h> writes one (a nop and its .note.stapsdt
entry), for the test programs with USDT sites: Debian's systemtap-sdt-dev is not installed.
SDT_SEM names a semaphore the kernel counts up while a uprobe with ref_ctr_offset is on it."""

SDT_MACROS = r"""
#define SDT_BASE ".ifndef _.stapsdt.base\n" \
  ".pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat\n" \
  ".weak _.stapsdt.base\n.hidden _.stapsdt.base\n_.stapsdt.base: .space 1\n" \
  ".size _.stapsdt.base, 1\n.popsection\n.endif\n"
#define SDT_SEM(sem, prov, name, argfmt, ...) __asm__ __volatile__("990: nop\n" \
    ".pushsection .note.stapsdt,\"?\",\"note\"\n.balign 4\n" \
    ".4byte 992f-991f, 994f-993f, 3\n991: .asciz \"stapsdt\"\n992: .balign 4\n" \
    "993: .8byte 990b\n.8byte _.stapsdt.base\n.8byte " sem "\n" \
    ".asciz \"" prov "\"\n.asciz \"" name "\"\n.asciz \"" argfmt "\"\n994: .balign 4\n.popsection\n" \
    SDT_BASE :: __VA_ARGS__)
#define SDT(prov, name, argfmt, ...) SDT_SEM("0", prov, name, argfmt, __VA_ARGS__)
"""

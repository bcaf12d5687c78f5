# The init image of the captured compose lab (Istio's istio-init): outrider:dev plus the
# iptables programs `outrider iptables` runs (iptables-save / iptables-restore), with exactly
# the shared libraries `ldd` lists for them and the xtables extensions they load at run time.
# Built by scripts/build-image.sh on top of the outrider image (the binary's layer is shared).
#
# A separate image rather than more files in outrider:dev: the sidecars, the apps and the CA
# keep an image that is one static binary and nothing that links glibc; only the one-shot
# init container, the only one with NET_ADMIN, carries the iptables programs.
ARG BASE=outrider:dev
FROM ${BASE}
COPY rootfs/ /
# The backend: nf_tables (xtables-nft-multi). Both work with this host's kernel; nf_tables is
# the one Docker writes its own rules with here (its embedded-DNS chains in every container's
# nat table), so the pod keeps one nat table, and it needs only CAP_NET_ADMIN. The legacy
# backend is in the image too, for hosts whose Docker still uses ip_tables:
# OUTRIDER_IPTABLES_BIN=/usr/sbin/xtables-legacy-multi, which also needs CAP_NET_RAW (it talks
# to the kernel through a raw socket). See scripts/build-image.sh.
ENV OUTRIDER_IPTABLES_BIN=/usr/sbin/xtables-nft-multi
# Changing the nat table needs root with CAP_NET_ADMIN (compose: user "0:0", cap_add).
USER 0:0
ENTRYPOINT ["/outrider"]
CMD ["iptables"]

# Prometheus for the compose lab: Debian's `prometheus` binary plus exactly the shared
# libraries `ldd` lists for it, FROM scratch. Built by scripts/build-image.sh.
FROM scratch
COPY rootfs/ /
# The TSDB directory, writable by the runtime user (a named volume mounted here inherits it).
COPY --chown=65534:65534 data /prometheus
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=0.0.0.0:9090"]

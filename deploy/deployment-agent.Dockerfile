# The deployment agent: one statically linked binary. It runs as root because it talks to the
# Docker socket, which is root-owned; mount it read-write (`/var/run/docker.sock`).
FROM scratch
COPY deployment-agent /deployment-agent
EXPOSE 9000 9001 9002
HEALTHCHECK --interval=2s --timeout=2s --start-period=2s --retries=3 CMD ["/deployment-agent", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/deployment-agent"]

# A second third-party web server for the "bring your own app" tests and the README's example:
# Debian's nginx with exactly the shared libraries `ldd` names (jobs/lib.sh, build_nginx_image,
# fills the context), listening on 8080 as an unprivileged user; pid and temporary files in
# /tmp. Nothing is pulled.
FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 tmp/ /tmp/
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/usr/sbin/nginx", "-e", "stderr", "-c", "/etc/nginx/nginx.conf"]

# A third-party static web server for the "bring your own app" tests: Debian's busybox-static
# binary (jobs/lib.sh, build_busybox_httpd_image, fills the context) serving /www. It answers
# `/` and has no `/health` (404), unlike our worker. Nothing is pulled.
FROM scratch
COPY busybox /bin/busybox
COPY www/ /www/
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]

# Captured by TestCaptureFixtures (capture_test.go) from:
# HAProxy version 3.0.11-1+deb13u4 2026/10/15 - https://haproxy.org/
# haproxy.cfg used:
#   global
#     stats socket /tmp/TestCaptureFixtures3107828116/001/admin.sock mode 600 level admin
#     stats socket ipv4@127.0.0.1:18210 level admin
#   defaults
#     mode http
#     timeout connect 1s
#     timeout client 5s
#     timeout server 5s
#     default-server inter 300ms fall 2 rise 2
#   frontend fe_http
#     bind 127.0.0.1:18209
#     default_backend web
#   backend web
#     option httpchk GET /
#     http-check disable-on-404
#     http-check expect status 200
#     server web-01 127.0.0.1:18199 check
#     server web-02 127.0.0.1:18200 check
#     server web-03 127.0.0.1:18201 check
#     server web-04 127.0.0.1:18202 check
#     server web-05 127.0.0.1:18203 check
#     server web-06 127.0.0.1:18204
#     server web-07 127.0.0.1:18205 check disabled
#     server web-08 127.0.0.1:18206 check weight 0
#   backend api
#     option httpchk GET /health
#     server api-01 127.0.0.1:18207 check
#     server api-02 127.0.0.1:18208 check
echo 'show stat' | socat -t 5 - UNIX-CONNECT:$SOCK > testdata/3.0/show_stat.csv
echo 'show servers state' | socat -t 5 - UNIX-CONNECT:$SOCK > testdata/3.0/show_servers_state.txt
echo 'show info' | socat -t 5 - UNIX-CONNECT:$SOCK > testdata/3.0/show_info.txt
echo 'set server api/api-01 state ready' | socat -t 5 - UNIX-CONNECT:$SOCK > testdata/3.0/set_ok.txt
echo 'show servers state nope' | socat -t 5 - UNIX-CONNECT:$SOCK > testdata/3.0/err_no_backend.txt
echo 'set server web/nope state drain' | socat -t 5 - UNIX-CONNECT:$SOCK > testdata/3.0/err_no_server.txt
echo 'set server web/web-01 state bogus' | socat -t 5 - UNIX-CONNECT:$SOCK > testdata/3.0/err_bad_state.txt
echo 'bogus' | socat -t 5 - UNIX-CONNECT:$SOCK > testdata/3.0/err_unknown_command.txt

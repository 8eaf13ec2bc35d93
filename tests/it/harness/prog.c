
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>
static void on_term(int s) { (void)s; _exit(143); }
static volatile sig_atomic_t hups;
static void on_hup(int s) { (void)s; hups++; }
static char watched[1024 * 1024];
/* SHA-256 (FIPS 180-4), just enough to prove which secret a container read. */
static const uint32_t K[64] = {
0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2};
#define ROR(x,n) (((x)>>(n))|((x)<<(32-(n))))
static void block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64], a,b,c,d,e,f,g,k,t1,t2; int i;
    for (i = 0; i < 16; i++) w[i] = (uint32_t)p[4*i]<<24 | (uint32_t)p[4*i+1]<<16 | (uint32_t)p[4*i+2]<<8 | p[4*i+3];
    for (i = 16; i < 64; i++) w[i] = (ROR(w[i-2],17)^ROR(w[i-2],19)^(w[i-2]>>10)) + w[i-7] + (ROR(w[i-15],7)^ROR(w[i-15],18)^(w[i-15]>>3)) + w[i-16];
    a=h[0];b=h[1];c=h[2];d=h[3];e=h[4];f=h[5];g=h[6];k=h[7];
    for (i = 0; i < 64; i++) {
        t1 = k + (ROR(e,6)^ROR(e,11)^ROR(e,25)) + ((e&f)^(~e&g)) + K[i] + w[i];
        t2 = (ROR(a,2)^ROR(a,13)^ROR(a,22)) + ((a&b)^(a&c)^(b&c));
        k=g; g=f; f=e; e=d+t1; d=c; c=b; b=a; a=t1+t2;
    }
    h[0]+=a;h[1]+=b;h[2]+=c;h[3]+=d;h[4]+=e;h[5]+=f;h[6]+=g;h[7]+=k;
}
static int sha256_file(const char *path, char out[65]) {
    uint32_t h[8] = {0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19};
    unsigned char buf[128]; size_t n, fill = 0; uint64_t len = 0; int i;
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    while ((n = fread(buf + fill, 1, 64 - fill, f)) > 0) {
        fill += n; len += n;
        if (fill == 64) { block(h, buf); fill = 0; }
    }
    fclose(f);
    buf[fill++] = 0x80;
    if (fill > 56) { memset(buf + fill, 0, 64 - fill); block(h, buf); fill = 0; }
    memset(buf + fill, 0, 56 - fill);
    for (i = 0; i < 8; i++) buf[56 + i] = (unsigned char)((len * 8) >> (56 - 8 * i));
    block(h, buf);
    for (i = 0; i < 8; i++) sprintf(out + 8 * i, "%08x", h[i]);
    return 0;
}
int main(int argc, char **argv) {
    int i;
    signal(SIGTERM, on_term);
    printf("out-line\n"); fflush(stdout);
    fprintf(stderr, "err-line\n"); fflush(stderr);
    if (argc > 1 && strcmp(argv[1], "sleep") == 0) { for (;;) pause(); }
    if (argc > 2 && strcmp(argv[1], "exit") == 0) return atoi(argv[2]);
    if (argc > 3 && strcmp(argv[1], "ask") == 0) {
        /* ask NAME PORT: resolve NAME in /etc/hosts (as a task on a network sees it), connect,
           print the answer; again every 300 ms until stopped. */
        for (;;) {
            char line[512], ip[64] = "", *tok; FILE *h = fopen("/etc/hosts", "r");
            while (h && fgets(line, sizeof line, h)) {
                char *addr = strtok(line, " \t\n");
                if (!addr || addr[0] == '#') continue;
                while ((tok = strtok(0, " \t\n")))
                    if (strcmp(tok, argv[2]) == 0 && strlen(addr) < sizeof ip) strcpy(ip, addr);
            }
            if (h) fclose(h);
            if (!ip[0]) { printf("via %s: unresolved\n", argv[2]); fflush(stdout); usleep(300000); continue; }
            struct sockaddr_in a; int s = socket(AF_INET, SOCK_STREAM, 0), n; char buf[256];
            memset(&a, 0, sizeof a);
            a.sin_family = AF_INET;
            a.sin_port = htons(atoi(argv[3]));
            unsigned b0, b1, b2, b3;
            if (sscanf(ip, "%u.%u.%u.%u", &b0, &b1, &b2, &b3) == 4)
                a.sin_addr.s_addr = htonl((b0 << 24) | (b1 << 16) | (b2 << 8) | b3);
            if (connect(s, (struct sockaddr *)&a, sizeof a) == 0 && (n = read(s, buf, sizeof buf - 1)) > 0) {
                buf[n] = 0;
                printf("via %s %s: %s", argv[2], ip, buf);
            } else {
                printf("via %s %s: no answer\n", argv[2], ip);
            }
            fflush(stdout);
            close(s);
            usleep(300000);
        }
    }
    if (argc > 1 && strcmp(argv[1], "serve") == 0) {
        /* serve: answer each TCP connection with the task's identity, then close; on
           127.0.0.1:$PORT (an exec task) or on port 80 of every address (a container). */
        const char *p = getenv("PORT"), *node = getenv("SKEP_NODE_ID"), *task = getenv("SKEP_TASK_ID");
        int s = socket(AF_INET, SOCK_STREAM, 0), one = 1, c, n;
        struct sockaddr_in a; char msg[256];
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons(p ? atoi(p) : 80);
        a.sin_addr.s_addr = htonl(p ? INADDR_LOOPBACK : INADDR_ANY);
        if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 64) != 0) { perror("serve"); return 2; }
        printf("serving\n"); fflush(stdout);
        for (;;) {
            c = accept(s, 0, 0);
            if (c < 0) continue;
            n = snprintf(msg, sizeof msg, "node=%s task=%s\n", node ? node : "?", task ? task : "?");
            if (write(c, msg, n) < 0) { }
            close(c);
        }
    }
    if (argc > 1 && strcmp(argv[1], "udp-echo") == 0) {
        /* udp-echo: answer each UDP datagram with "node=N task=T: " and the datagram, on
           127.0.0.1:$PORT (an exec task) or on port 53 of every address (a container). */
        const char *p = getenv("PORT"), *node = getenv("SKEP_NODE_ID"), *task = getenv("SKEP_TASK_ID");
        int s = socket(AF_INET, SOCK_DGRAM, 0), n, m;
        struct sockaddr_in a, from; socklen_t fl; char in[2048], out[4096];
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons(p ? atoi(p) : 53);
        a.sin_addr.s_addr = htonl(p ? INADDR_LOOPBACK : INADDR_ANY);
        if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("udp-echo"); return 2; }
        printf("echoing\n"); fflush(stdout);
        for (;;) {
            fl = sizeof from;
            n = recvfrom(s, in, sizeof in, 0, (struct sockaddr *)&from, &fl);
            if (n < 0) continue;
            m = snprintf(out, sizeof out, "node=%s task=%s: ", node ? node : "?", task ? task : "?");
            if (m < 0 || m + n > (int)sizeof out) continue;
            memcpy(out + m, in, n);
            if (sendto(s, out, m + n, 0, (struct sockaddr *)&from, fl) < 0) { }
        }
    }
    if (argc > 2 && strcmp(argv[1], "watch") == 0) {
        /* watch FILE: reads FILE whole in a tight loop; prints "pid N" first, "seen C LEN"
           whenever what it reads changes (a value of LEN bytes all C), "BAD ..." for a read
           that is not one byte repeated (a partial or mixed file) or fails, "hup N" after
           each SIGHUP. */
        struct sigaction sa;
        size_t last_len = (size_t)-1; char last_c = 0; int seen_hups = 0;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_hup;
        sa.sa_flags = SA_RESTART;
        sigaction(SIGHUP, &sa, NULL);
        printf("pid %d\n", (int)getpid()); fflush(stdout);
        for (;;) {
            size_t n = 0, k; ssize_t r; int fd, whole;
            if (hups != seen_hups) {
                seen_hups = hups;
                printf("hup %d\n", seen_hups); fflush(stdout);
            }
            fd = open(argv[2], O_RDONLY);
            if (fd < 0) { printf("BAD open\n"); fflush(stdout); usleep(10000); continue; }
            while (n < sizeof watched && (r = read(fd, watched + n, sizeof watched - n)) > 0)
                n += (size_t)r;
            close(fd);
            whole = n > 0;
            for (k = 1; k < n && whole; k++) whole = watched[k] == watched[0];
            if (!whole) {
                printf("BAD mixed len=%zu first=%c\n", n, n ? watched[0] : '-'); fflush(stdout);
            } else if (n != last_len || watched[0] != last_c) {
                last_len = n; last_c = watched[0];
                printf("seen %c %zu\n", last_c, last_len); fflush(stdout);
            }
        }
    }
    if (argc > 1 && strcmp(argv[1], "secret") == 0) {
        /* secret PATH...: what the task sees of each file, then wait to be stopped. */
        struct statfs fs;
        if (statfs("/run/secrets", &fs) == 0)
            printf("fs=%s\n", fs.f_type == 0x01021994 ? "tmpfs" : "other");
        else
            printf("fs=none\n");
        for (i = 2; i < argc; i++) {
            struct stat st; char hex[65];
            if (stat(argv[i], &st) != 0 || sha256_file(argv[i], hex) != 0) {
                printf("%s unreadable\n", argv[i]);
                continue;
            }
            printf("%s uid=%u gid=%u mode=%o sha256=%s\n", argv[i], (unsigned)st.st_uid,
                   (unsigned)st.st_gid, (unsigned)(st.st_mode & 0777), hex);
        }
        fflush(stdout);
        for (;;) pause();
    }
    return 0;
}

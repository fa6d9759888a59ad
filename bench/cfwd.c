/*
 * cfwd: a minimal userspace RTP forwarder in C, the reference bench/relay_pps.py
 * --netns compares sipsuite's kernel data plane against (issue 16: "kernel
 * path >= 90 % of the C forwarder's packet rate").  Not part of sipsuite.
 *
 *     cfwd LOCAL_IP < sessions
 *
 * stdin, one session a line, until EOF:
 *
 *     PORT_A PEER_A_IP PEER_A_PORT PORT_B PEER_B_IP PEER_B_PORT
 *
 * It binds LOCAL_IP:PORT_A (the leg facing peer A) and LOCAL_IP:PORT_B (facing
 * peer B), then forwards what PORT_A receives from peer A to peer B from
 * PORT_B, and what PORT_B receives from peer B to peer A from PORT_A: what
 * the relay does for a session whose two directions are latched, with the
 * peers fixed (no latching; a datagram from any other source is dropped, as
 * the latched relay's strict source check drops it).  One thread, epoll;
 * each readable socket is drained with recvmmsg in batches and every batch
 * goes out with one sendmmsg, so the per-packet cost is the least a
 * userspace forwarder of one socket pair per leg can pay.
 *
 * Prints "ready N" on stdout once every socket is bound, then runs until
 * killed.  Counters on SIGTERM/SIGINT go to stdout too.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 32
#define MAXPKT 2048

struct leg {
    int fd;
    struct sockaddr_in from;  /* the only source accepted on this socket */
    struct sockaddr_in to;    /* where its packets go, from the other leg's socket */
    struct leg *other;
};

static volatile sig_atomic_t stop;
static unsigned long long forwarded, dropped_src, send_fail;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void die(const char *what) { perror(what); exit(1); }

static int bind_udp(const char *ip, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        die("socket");
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "cfwd: bad address %s\n", ip);
        exit(2);
    }
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        fprintf(stderr, "cfwd: bind %s:%d: %s\n", ip, port, strerror(errno));
        exit(1);
    }
    return fd;
}

static void peer(struct sockaddr_in *a, const char *ip, int port)
{
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, ip, &a->sin_addr) != 1) {
        fprintf(stderr, "cfwd: bad peer address %s\n", ip);
        exit(2);
    }
}

/* Drain one leg: receive batches until the socket is empty, send each batch
 * on to the other leg's peer, from the other leg's socket. */
static void forward(struct leg *in)
{
    static char bufs[BATCH][MAXPKT];
    static struct iovec rio[BATCH], sio[BATCH];
    static struct sockaddr_in src[BATCH];
    static struct mmsghdr rmsg[BATCH], smsg[BATCH];
    struct leg *out = in->other;

    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            rio[i].iov_base = bufs[i];
            rio[i].iov_len = MAXPKT;
            memset(&rmsg[i].msg_hdr, 0, sizeof rmsg[i].msg_hdr);
            rmsg[i].msg_hdr.msg_iov = &rio[i];
            rmsg[i].msg_hdr.msg_iovlen = 1;
            rmsg[i].msg_hdr.msg_name = &src[i];
            rmsg[i].msg_hdr.msg_namelen = sizeof src[i];
        }
        int n = recvmmsg(in->fd, rmsg, BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return;  /* EAGAIN: drained (errors such as ICMP ones: try next wake-up) */
        int k = 0;
        for (int i = 0; i < n; i++) {
            if (src[i].sin_addr.s_addr != in->from.sin_addr.s_addr
                || src[i].sin_port != in->from.sin_port) {
                dropped_src++;
                continue;
            }
            sio[k].iov_base = bufs[i];
            sio[k].iov_len = rmsg[i].msg_len;
            memset(&smsg[k].msg_hdr, 0, sizeof smsg[k].msg_hdr);
            smsg[k].msg_hdr.msg_iov = &sio[k];
            smsg[k].msg_hdr.msg_iovlen = 1;
            smsg[k].msg_hdr.msg_name = &in->to;
            smsg[k].msg_hdr.msg_namelen = sizeof in->to;
            k++;
        }
        int done = 0;
        while (done < k) {
            int s = sendmmsg(out->fd, smsg + done, (unsigned)(k - done), 0);
            if (s <= 0) {
                /* A full send queue or an ICMP error: drop the rest, as a relay would. */
                send_fail += (unsigned long long)(k - done);
                break;
            }
            done += s;
        }
        forwarded += (unsigned long long)done;
        if (n < BATCH)
            return;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: cfwd LOCAL_IP < sessions\n"
                        "  sessions: PORT_A PEER_A_IP PEER_A_PORT PORT_B PEER_B_IP PEER_B_PORT\n");
        return 2;
    }
    /* Two sockets a session: lift the soft descriptor limit to the hard one. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    size_t cap = 64, nlegs = 0;
    struct leg *legs = malloc(cap * sizeof *legs);
    if (!legs)
        die("malloc");
    int pa, pap, pb, pbp;
    char ipa[64], ipb[64];
    while (scanf("%d %63s %d %d %63s %d", &pa, ipa, &pap, &pb, ipb, &pbp) == 6) {
        if (nlegs + 2 > cap) {
            cap *= 2;
            legs = realloc(legs, cap * sizeof *legs);
            if (!legs)
                die("realloc");
        }
        struct leg *a = &legs[nlegs], *b = &legs[nlegs + 1];
        a->fd = bind_udp(argv[1], pa);
        b->fd = bind_udp(argv[1], pb);
        peer(&a->from, ipa, pap);
        peer(&b->from, ipb, pbp);
        a->to = b->from;
        b->to = a->from;
        nlegs += 2;
    }
    if (!feof(stdin)) {
        fprintf(stderr, "cfwd: malformed session line after %zu sessions\n", nlegs / 2);
        return 2;
    }
    /* Pointers only now: realloc may have moved the array while reading. */
    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    for (size_t i = 0; i < nlegs; i++) {
        legs[i].other = &legs[i ^ 1];
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &legs[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, legs[i].fd, &ev) < 0)
            die("epoll_ctl");
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    printf("ready %zu\n", nlegs / 2);
    fflush(stdout);

    struct epoll_event evs[256];
    while (!stop) {
        int n = epoll_wait(ep, evs, 256, 1000);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++)
            forward(evs[i].data.ptr);
    }
    printf("forwarded %llu, wrong source %llu, send failures %llu\n",
           forwarded, dropped_src, send_fail);
    return 0;
}

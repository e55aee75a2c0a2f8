/* Keep every socket a process binds on the loopback interface.
 *
 * Loaded with LD_PRELOAD into a private local Ray instance (and the taxoclip process that drives
 * it): Ray's servers bind all interfaces (0.0.0.0 / ::) and have no option to bind only 127.0.0.1,
 * so a laptop running `taxoclip predict --engine ray` would otherwise accept connections from its
 * whole network. Any IPv4 bind becomes 127.0.0.1, any IPv6 bind ::ffff:127.0.0.1 (loopback, still
 * reachable by the IPv4 clients of a dual-stack socket); the port is kept. Outgoing connections
 * are untouched. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind;
    if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in a;
        memcpy(&a, addr, sizeof a);
        if ((ntohl(a.sin_addr.s_addr) >> 24) != 127) a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return real_bind(fd, (struct sockaddr *)&a, sizeof a);
    }
    if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 a;
        memcpy(&a, addr, sizeof a);
        if (!IN6_IS_ADDR_LOOPBACK(&a.sin6_addr)) {
            /* ::ffff:127.0.0.1 — loopback, reachable by IPv4 clients of a dual-stack socket */
            memset(&a.sin6_addr, 0, sizeof a.sin6_addr);
            a.sin6_addr.s6_addr[10] = a.sin6_addr.s6_addr[11] = 0xff;
            a.sin6_addr.s6_addr[12] = 127; a.sin6_addr.s6_addr[15] = 1;
        }
        return real_bind(fd, (struct sockaddr *)&a, sizeof a);
    }
    return real_bind(fd, addr, len);
}

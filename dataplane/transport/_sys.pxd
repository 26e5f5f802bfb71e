# cython: language_level=3
"""Linux declarations for the batched UDP and TUN transports (recvmmsg/sendmmsg, poll), and
``wait_readable``, the wait both receive loops start with."""

from libc.errno cimport errno, EINTR
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from posix.uio cimport iovec
from posix.unistd cimport read


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct sockaddr_storage:
        sa_family_t ss_family

    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    int AF_INET
    int AF_INET6
    int MSG_DONTWAIT
    int MSG_WAITFORONE
    int MSG_TRUNC

    int SOL_SOCKET
    # Linux >= 2.6.33: each received message carries the socket's cumulative drop count.
    int SO_RXQ_OVFL

    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type

    cmsghdr *CMSG_FIRSTHDR(msghdr *msgh)
    cmsghdr *CMSG_NXTHDR(msghdr *msgh, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_SPACE(size_t length)
    size_t CMSG_LEN(size_t length)

    int recvmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout)
    int sendmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags)


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr

    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr

    struct in6_addr:
        uint8_t s6_addr[16]

    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)


cdef extern from "<netinet/udp.h>" nogil:
    int SOL_UDP
    int UDP_SEGMENT
    int UDP_GRO


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    short POLLIN
    short POLLERR
    short POLLHUP
    int poll(pollfd *fds, unsigned long nfds, int timeout)


cdef inline int wait_readable(int fd, int wake_fd, int ms) noexcept nogil:
    """Wait up to ``ms`` ms (< 0: forever) until ``fd`` is readable or the eventfd
    ``wake_fd`` (if >= 0) is signalled; EINTR is retried. Returns 1 if ``fd`` is readable,
    0 on timeout or wake-up, -errno if poll failed. A wake-up is drained, one per signal,
    so that later waits block again."""
    cdef pollfd fds[2]
    cdef unsigned long nfds = 1
    cdef uint8_t drain[8]
    cdef int rc
    fds[0].fd = fd
    fds[0].events = POLLIN
    fds[0].revents = 0
    if wake_fd >= 0:
        fds[1].fd = wake_fd
        fds[1].events = POLLIN
        fds[1].revents = 0
        nfds = 2
    while True:
        rc = poll(fds, nfds, ms)
        if rc < 0 and errno == EINTR:
            continue
        break
    if rc < 0:
        return -errno
    if rc > 0 and nfds == 2 and fds[1].revents != 0:
        read(wake_fd, drain, 8)
    return 1 if rc > 0 and fds[0].revents != 0 else 0

"""Why each connection got its SYN-cookie verdict (:mod:`.cookies`): one code per
reason, kept as an int8 in the verdict columns, and the text the JSON and the tables
show for it."""

from __future__ import annotations

from enum import IntEnum

from tcpsleuth.detectors.capture.kernels import LATER_SPAN_NS


class Reason(IntEnum):
    """What decided a connection's verdict (an int8 code in the verdict columns); its
    ``text`` is what the JSON and the tables say."""

    text: str

    def __new__(cls, text: str) -> Reason:
        code = len(cls.__members__)
        member = int.__new__(cls, code)
        member._value_ = code
        member.text = text
        return member

    NO_TIMESTAMPS = "no timestamps in the handshake: a cookie leaves no mark"
    NOTHING_LATER = "one SYN-ACK and no later server segment: nothing to compare its clock with"
    GROUP_LAG = "TSval behind the server's clock by the cookie rounding, with the cookie's low bits"
    GROUP_RESIDUE = "TSval low bits are not the ones a cookie of this server carries"
    GROUP_AMBIGUOUS = (
        "residue of a cookie but no lag: made when the clock's low bits equalled its "
        "option bits, when a cookie and an ordinary SYN-ACK look the same"
    )
    JUMP = "TSval jumped ahead after the SYN-ACK by the cookie rounding"
    NO_JUMP = "TSval did not jump after the SYN-ACK, and the server answered promptly"
    JUMP_HIDDEN = "no jump after the SYN-ACK, but the server's delay could have hidden one"
    REPEAT_64 = "a repeated SYN-ACK moved its TSval by a multiple of 64 ms, not with the clock"
    REPEAT_CLOCK = "a repeated SYN-ACK moved its TSval with the clock"
    NO_SYNACK = "no SYN-ACK in the capture"
    SILENT_SERVER = (
        "the client sent for seconds after the handshake while the server neither answered "
        "nor repeated its SYN-ACK: no request socket was waiting, as after a cookie whose "
        "connection the full accept queue refused"
    )
    RESET = (
        "the server reset the client's data without acknowledging any of it: the "
        "handshake's ACK was refused (accept queue full) and the later segments no "
        "longer pass a cookie's check; an ordinary request socket would have kept waiting"
    )
    PHASE = (
        "no jump, but the TSval sits in the server's cookie clock phase, and the server "
        "sent cookies just before and after it and no ordinary SYN-ACK amid its cookies "
        "around that time"
    )
    OFF_PHASE = "no jump, and the TSval is off the clock phase all this server's cookies share"
    IN_PHASE = (
        "no jump, in the server's cookie clock phase: made when the clock's low bits "
        "equalled its option bits, when a cookie and an ordinary SYN-ACK look the same"
    )
    OPTIONS_CLEARED = (
        "no timestamps and the SYN-ACK kept the MSS alone of the options the SYN offered, "
        "while the listener's other SYN-ACKs carry them: a cookie (.cookie_options)"
    )
    OPTIONS_KEPT = (
        "no timestamps, and the SYN-ACK kept window scale or SACK: a cookie without "
        "timestamps cannot"
    )
    FAR_NO_RATE = (
        f"the server's next segment came more than {LATER_SPAN_NS // 1_000_000_000} s after "
        "its SYN-ACK, and too few "
        "ordinary connections of the capture measure its clock's rate to compare over that long"
    )
    FAR_BEYOND = (
        "the server's next segment came later after its SYN-ACK than its measured clock "
        "rate can be trusted over"
    )
    BEHIND_PHASE = (
        "no jump, and the TSval sits a few ms behind the clock phase this server's "
        "cookies share, where a cookie whose later segment left late would: either"
    )


# the texts by code, for the verdict columns
REASONS = tuple(reason.text for reason in Reason)

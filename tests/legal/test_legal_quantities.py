"""Numbers in contract clauses, read as a reviewer reads them (apps/legal/quantities.py)."""
from __future__ import annotations

import re

import pytest

from apps.legal.quantities import annual_interest_percent, months_near, parse_chinese_numeral, percentages
from apps.legal.statutes import chinese_numeral


def test_chinese_numerals_round_trip_through_the_article_number_writer():
    for n in list(range(1, 130)) + [200, 506, 585, 1000, 1260, 9999]:
        assert parse_chinese_numeral(chinese_numeral(n)) == n
    assert parse_chinese_numeral("两") == 2
    with pytest.raises(ValueError):
        parse_chinese_numeral("十a")


def test_percentages_in_both_languages():
    assert percentages("按合同总额百分之八十支付违约金") == [80.0]
    assert percentages("赔付合同价款的7成") == [70.0]
    assert percentages("每日万分之五") == [0.05]
    assert percentages("a penalty of 0.5% per week, capped at 5 percent") == [0.5, 5.0]
    assert percentages("no numbers here") == []


def test_interest_is_annualised():
    assert annual_interest_percent("年利率百分之四") == 4.0
    assert annual_interest_percent("月利率为百分之2") == 24.0
    assert annual_interest_percent("按每月3分的利息支付") == 36.0
    assert annual_interest_percent("The loan bears interest of 60% per annum.") == 60.0
    assert annual_interest_percent("The loan is interest-free.") is None


def test_duration_is_taken_next_to_the_keyword():
    probation = re.compile("试用期|probation")
    assert months_near("劳动合同期限三年，试用期为十二个月。", probation) == 12
    assert months_near("新员工须经历十个月的试用期。", probation) == 10
    assert months_near("a probation period of twelve months", probation) == 12
    assert months_near("probation for the first month", probation) == 1
    assert months_near("劳动合同期限三年。", probation) is None
